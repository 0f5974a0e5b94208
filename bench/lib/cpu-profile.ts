// Preloaded into the xapi process by `bench rpc --profile DIR` (NODE_OPTIONS=--import ..., as
// node refuses --cpu-prof in NODE_OPTIONS): starts V8's sampling profiler at once and writes
// DIR/xapi-<pid>.cpuprofile (Chrome DevTools format, like --cpu-prof) when the process exits.
import { Session } from 'node:inspector';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.env['XAPI_BENCH_CPU_PROFILE_DIR'];
if (dir) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 200 });
  session.post('Profiler.start');
  process.on('exit', () => {
    // Posts on an in-thread session complete synchronously, so this works in an exit handler.
    session.post('Profiler.stop', (err, res) => {
      if (err) return;
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, `xapi-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
