// The bash completion script (completion/xe) against a real host: command names, a command's
// parameter names, uuids for uuid=, field names for param-name=, as bash would ask for them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PASSWORD, ROOT, startXapi, stopXapi, type XapiProcess } from './harness.js';
import { xe } from './xe-harness.js';

const run = promisify(execFile);
let host: XapiProcess;
let bin: string;

before(async () => {
  host = await startXapi();
  bin = await mkdtemp(join(tmpdir(), 'xe-bin-'));
  await writeFile(join(bin, 'xe'), `#!/bin/sh\nexec '${process.execPath}' '${join(ROOT, 'bin/xe.js')}' "$@"\n`);
  await chmod(join(bin, 'xe'), 0o755);
});
after(async () => {
  if (host) await stopXapi(host);
  if (bin) await rm(bin, { recursive: true, force: true });
});

/** What bash offers for `line` (cursor at its end), split into words as bash would. */
async function complete(line: string): Promise<string[]> {
  const script = `
    source '${join(ROOT, 'completion/xe')}'
    COMP_LINE="$LINE"; COMP_POINT=\${#COMP_LINE}
    read -r -a COMP_WORDS <<< "$(printf '%s' "$COMP_LINE" | sed 's/\\([=:]\\)/ \\1 /g')"
    [[ "$COMP_LINE" == *" " || "$COMP_LINE" == *"=" ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 ))
    _xe_complete
    printf '%s\\n' "\${COMPREPLY[@]}"`;
  const { stdout } = await run('bash', ['-c', script], {
    env: {
      ...process.env,
      PATH: `${bin}:${process.env.PATH}`,
      HOME: '/nonexistent-xe-home',
      LINE: line,
      XE_EXTRA_ARGS: `server=${host.address},port=${host.httpsPort},username=root,password=${PASSWORD}`,
    },
  });
  return stdout.split('\n').filter((l) => l !== '');
}

test('xe completes command names, parameter names, uuids and field names', async () => {
  const commands = await complete('xe vm-par');
  assert.deepEqual(commands, ['vm-param-add', 'vm-param-clear', 'vm-param-get', 'vm-param-list', 'vm-param-remove', 'vm-param-set']);
  const params = await complete('xe vm-param-get ');
  assert.deepEqual(params.sort(), ['database:', 'param-key=', 'param-name=', 'uuid=']);
  const dom0 = (await xe(host, 'vm-list', 'is-control-domain=true', '--minimal')).stdout.trim();
  assert.deepEqual(await complete(`xe vm-param-get uuid=${dom0.slice(0, 6)}`), [dom0]);
  const fields = await complete(`xe vm-param-add uuid=${dom0} param-name=`);
  assert.ok(fields.includes('tags') && fields.includes('other-config'), fields.join(' '));
  assert.ok(!fields.includes('name-label'), 'only sets and maps that can be added to');
  assert.deepEqual(await complete(`xe vm-shutdown vm=Control --f`), []);
  assert.ok((await complete('xe vm-shutdown ')).includes('vm='));
});
