// Performance counters with real processes: the RRDs move with the simulated guests' load;
// /rrd_updates?json=true as Xen Orchestra reads it; the data-source API; perfmon's ALARM; the
// Prometheus /metrics; a stopped VM's RRD archived and a restart keeping the RRDs; in a pool,
// /vm_rrd asked of the coordinator for a member's VM, and the RRD following a migration.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { join } from 'node:path';
import { test } from 'node:test';
import { jsonCall, lenientCall, login, xapiFailure } from './client.js';
import { PASSWORD, startXapi, stopXapi } from './harness.js';
import { hostRef, startPool } from './pool-harness.js';
import { vbdRecord, vdiRecord, vifRecord, vmRecord } from '../vm-record.js';
import { waitUntil } from '../wait.js';

const MiB = 1024 * 1024;
/** Sampling every 200 ms, perfmon every second on the 5 s archive: the tests take seconds. */
const FAST = ['--rrd-sample-interval-ms', '200', '--perfmon-interval', '1', '--perfmon-rrd-step', '5', '--sim-boot-ms', '0'];

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function fetchText(url: string, headers: Record<string, string> = {}): Promise<Reply> {
  const get = url.startsWith('https:') ? httpsGet : httpGet;
  return new Promise((resolve, reject) => {
    get(url, { headers, rejectUnauthorized: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    }).on('error', reject);
  });
}

/**
 * What xo-server does with /rrd_updates?json=true (packages/xo-server/src/xapi-stats.mjs,
 * _getAndUpdateStats; a faithful copy of what it reads, as xo-server is not a package we can
 * import): the step it asked for must come back as meta.step (compared with !==), rows are
 * reversed to oldest first, columns picked by /^AVERAGE:([^:]+):(.+):(.+)$/ for the object's
 * uuid, NaN values (isNaN) become null.
 */
function xoStats(text: string, uuid: string, step: number): Record<string, (number | null)[]> {
  const json = JSON.parse(text) as { meta: { step: unknown; end: unknown; legend: string[] }; data: { t: number; values: unknown[] }[] };
  if (json.meta.step !== step) throw new Error(`Unable to get the true granularity: ${json.meta.step}`);
  const data = [...json.data].reverse();
  const stats: Record<string, (number | null)[]> = {};
  json.meta.legend.forEach((legend, index) => {
    const [, , uuidInStat, metricType] = /^AVERAGE:([^:]+):(.+):(.+)$/.exec(legend)!;
    if (uuidInStat !== uuid) return;
    stats[metricType!] = data.map(({ values }) => {
      const v = values[index];
      return Number.isNaN(v) || Number.isNaN(Number(v)) ? null : (v as number);
    });
  });
  return stats;
}

/** The newest known value of a series (XO's rows, oldest first). */
const newest = (xs: (number | null)[] | undefined) => [...(xs ?? [])].reverse().find((v) => v !== null) ?? undefined;

test('a host: counters move with load, XO reads /rrd_updates, data sources, perfmon, /metrics, archive, restart', {
  timeout: 180_000,
}, async () => {
  const x = await startXapi({ args: FAST });
  let y: Awaited<ReturnType<typeof startXapi>> | undefined;
  try {
    const s = await login(x.url, PASSWORD);
    const call = (m: string, ...p: unknown[]) => jsonCall(x.url, m, [s, ...p]);
    const [hostR] = (await call('host.get_all')) as string[];
    const hostUuid = (await call('host.get_uuid', hostR)) as string;
    const networks = (await call('network.get_all_records')) as Record<string, { bridge: string }>;
    const network = Object.entries(networks).find(([, n]) => n.bridge === 'xenbr0')![0];
    const pbds = (await call('PBD.get_all_records')) as Record<string, { SR: string }>;
    const srs = (await call('SR.get_all_records')) as Record<string, { type: string }>;
    const sr = Object.values(pbds)
      .map((p) => p.SR)
      .find((r) => srs[r]?.type === 'ext')!;
    const perfmon =
      '<config><variable><name value="cpu_usage"/><alarm_trigger_level value="0.5"/><alarm_trigger_period value="5"/></variable></config>';
    const busy = (await call(
      'VM.create',
      vmRecord(
        'busy',
        { memory: 128 * MiB },
        {
          other_config: { simulator_cpu_load: '0.7', simulator_disk_write_rate: String(2 * MiB), simulator_net_rate: String(MiB), perfmon },
        },
      ),
    )) as string;
    const vdi = (await call('VDI.create', vdiRecord(sr, 64 * MiB, 'busy disk'))) as string;
    await call('VBD.create', vbdRecord(busy, vdi));
    await call('VIF.create', vifRecord(busy, network));
    const idle = (await call('VM.create', vmRecord('idle', { memory: 128 * MiB }))) as string;
    await call('VIF.create', vifRecord(idle, network));
    await call('VM.start', busy, false, false);
    await call('VM.start', idle, false, false);
    const busyUuid = (await call('VM.get_uuid', busy)) as string;
    const idleUuid = (await call('VM.get_uuid', idle)) as string;

    // the 5 s rows, as XO asks for them (its query, its parsing)
    const updates = async () => {
      const now = Math.floor(Date.now() / 1000);
      const r = await fetchText(`${x.url}/rrd_updates?session_id=${s}&cf=AVERAGE&host=true&interval=5&json=true&start=${now - 600 + 5}`);
      assert.equal(r.status, 200, r.body);
      return r.body;
    };
    const moved = await waitUntil(
      'the busy VM to be busy in its RRD',
      async () => {
        const text = await updates();
        const b = xoStats(text, busyUuid, 5);
        const i = xoStats(text, idleUuid, 5);
        const h = xoStats(text, hostUuid, 5);
        const ok =
          (newest(b.cpu0) ?? 0) > 0.5 &&
          (newest(b.vbd_xvda_write) ?? 0) > 0 &&
          (newest(b.vif_0_rx) ?? 0) > 100_000 &&
          (newest(i.cpu0) ?? 1) < 0.2 &&
          (newest(h.pif_eth0_rx) ?? 0) > 100_000;
        return ok && { b, i, h };
      },
      { timeoutMs: 60_000 },
    );
    // the rates are what the guests do: ~2 MiB/s written, ~1 MiB/s received, the idle one quiet
    assert.ok(
      newest(moved.b.vbd_xvda_write)! > 0.5 * MiB && newest(moved.b.vbd_xvda_write)! < 4 * MiB,
      String(newest(moved.b.vbd_xvda_write)),
    );
    assert.ok(newest(moved.i.vif_0_rx)! < 10_000);
    assert.ok(newest(moved.h.memory_total_kib)! === 16384 * 1024);
    assert.ok(newest(moved.b.memory)! > 0);

    // the same rows as xport XML
    const xml = await fetchText(`${x.url}/rrd_updates?session_id=${s}&start=${Math.floor(Date.now() / 1000) - 60}&cf=AVERAGE&host=true`);
    assert.equal(xml.headers['content-type'], 'text/xml');
    assert.match(xml.body, /^<\?xml version="1\.0"\?><xport><meta><start>\d+<\/start><step>5<\/step>/);
    assert.ok(xml.body.includes(`<entry>AVERAGE:vm:${busyUuid}:cpu0</entry>`));
    assert.ok(xml.body.includes(`<entry>AVERAGE:host:${hostUuid}:cpu_avg</entry>`));
    // no start: 400; no session: 401
    assert.equal((await fetchText(`${x.url}/rrd_updates?session_id=${s}`)).status, 400);
    assert.equal((await fetchText(`${x.url}/rrd_updates?start=0`)).status, 401);

    // the whole host RRD: xapi's archives
    const hostRrd = await fetchText(`${x.url}/host_rrd?session_id=${s}`);
    assert.equal(hostRrd.status, 200);
    const cfs = [...hostRrd.body.matchAll(/<cf>(\w+)<\/cf><pdp_per_row>(\d+)<\/pdp_per_row>/g)].map((m) => `${m[1]}/${m[2]}`);
    assert.deepEqual(cfs, [
      'AVERAGE/1',
      'AVERAGE/12',
      'MIN/12',
      'MAX/12',
      'AVERAGE/720',
      'MIN/720',
      'MAX/720',
      'AVERAGE/17280',
      'MIN/17280',
      'MAX/17280',
    ]);

    // the data-source API
    const dss = (await lenientCall(x.url, 'VM.get_data_sources', [s, busy])) as {
      name_label: string;
      enabled: boolean;
      standard: boolean;
      units: string;
    }[];
    assert.deepEqual(
      dss.find((d) => d.name_label === 'cpu0'),
      { ...dss.find((d) => d.name_label === 'cpu0')!, enabled: true, standard: true, units: '(fraction)', min: 0, max: 1, value: 0 },
    );
    const errors = dss.find((d) => d.name_label === 'vif_0_rx_errors')!;
    assert.equal(errors.enabled, false);
    assert.equal(errors.standard, false);
    assert.ok(((await call('VM.query_data_source', busy, 'cpu0')) as number) > 0.3);
    assert.deepEqual(await xapiFailure(call('VM.query_data_source', busy, 'nonesuch')), [
      'INTERNAL_ERROR',
      'Rrd_interface.Rrdd_error([S(Rrdd_internal_error), S(Rrd.Invalid_data_source("nonesuch"))])',
    ]);
    assert.deepEqual(await xapiFailure(call('VM.record_data_source', busy, 'nonesuch')), [
      'INTERNAL_ERROR',
      'Rrd_interface.Rrdd_error([S(Datasource_missing), S(nonesuch)])',
    ]);
    await call('VM.record_data_source', busy, 'vif_0_rx_errors');
    const after = (await lenientCall(x.url, 'VM.get_data_sources', [s, busy])) as { name_label: string; enabled: boolean }[];
    assert.equal(after.find((d) => d.name_label === 'vif_0_rx_errors')!.enabled, true);
    await call('VM.forget_data_source_archives', busy, 'vif_0_rx_errors');
    const forgotten = (await lenientCall(x.url, 'VM.get_data_sources', [s, busy])) as { name_label: string; enabled: boolean }[];
    assert.equal(forgotten.find((d) => d.name_label === 'vif_0_rx_errors')!.enabled, false);
    const hostDss = (await lenientCall(x.url, 'host.get_data_sources', [s, hostR])) as { name_label: string }[];
    for (const n of ['cpu0', 'cpu_avg', 'loadavg', 'memory_total_kib', 'memory_free_kib', 'pif_eth0_rx', 'pif_eth0_tx']) {
      assert.ok(
        hostDss.some((d) => d.name_label === n),
        n,
      );
    }
    assert.equal(await call('host.query_data_source', hostR, 'memory_total_kib'), 16384 * 1024);

    // perfmon: the busy VM's cpu_usage over 0.5 for 5 s raises one ALARM
    const alarm = await waitUntil(
      'perfmon to raise an ALARM',
      async () => {
        const msgs = (await call('message.get_all_records')) as Record<
          string,
          { name: string; obj_uuid: string; priority: number; cls: string; body: string }
        >;
        return Object.values(msgs).find((m) => m.name === 'ALARM' && m.obj_uuid === busyUuid);
      },
      { timeoutMs: 60_000 },
    );
    assert.equal(alarm.cls, 'VM');
    assert.equal(alarm.priority, 3);
    assert.match(
      alarm.body,
      /^value: 0\.\d{6}\nconfig:\n<variable>\n\t<name value="cpu_usage"\/>\n\t<alarm_trigger_level value="0\.5"\/>\n\t<alarm_trigger_period value="5"\/>\n<\/variable>\n$/,
    );

    // Prometheus: 401 without credentials; Basic or a session
    const none = await fetchText(`${x.url}/metrics`);
    assert.equal(none.status, 401);
    assert.match(String(none.headers['www-authenticate']), /^Basic /);
    assert.equal(
      (await fetchText(`${x.url}/metrics`, { authorization: `Basic ${Buffer.from('root:wrong').toString('base64')}` })).status,
      401,
    );
    const basic = await fetchText(`${x.url}/metrics`, { authorization: `Basic ${Buffer.from(`root:${PASSWORD}`).toString('base64')}` });
    assert.equal(basic.status, 200);
    assert.match(String(basic.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    assert.match(
      basic.body,
      new RegExp(`xapi_vm_cpu_seconds_total\\{host_uuid="${hostUuid}",host="[^"]*",vm_uuid="${busyUuid}",vm="busy",vcpu="0"\\} \\d`),
    );
    assert.match(basic.body, /# TYPE xapi_host_memory_free_bytes gauge/);
    const bySession = await fetchText(`${x.url}/metrics`, { cookie: `session_id=${s}` });
    assert.equal(bySession.status, 200);

    // a halted VM's RRD is archived (here: the coordinator's own disk) and served from there
    await call('VM.hard_shutdown', idle);
    await waitUntil('the idle VM RRD archived', () => existsSync(join(x.stateDir, 'rrds', `${idleUuid}.gz`)));
    const archived = await fetchText(`${x.url}/vm_rrd?session_id=${s}&uuid=${idleUuid}`);
    assert.equal(archived.status, 200);
    assert.match(archived.body, /<ds><name>cpu0<\/name><type>DERIVE<\/type>/);
    assert.deepEqual(await xapiFailure(call('VM.get_data_sources', idle)), ['VM_BAD_POWER_STATE', idle, 'running', 'halted']);
    assert.equal((await fetchText(`${x.url}/vm_rrd?session_id=${s}&uuid=00000000-0000-0000-0000-000000000000`)).status, 404);
    // destroyed, its archive goes
    await call('VM.destroy', idle);
    assert.equal(existsSync(join(x.stateDir, 'rrds', `${idleUuid}.gz`)), false);

    // a restart keeps the RRDs: the busy VM's and the host's rows from before are still there
    const before = Math.floor(Date.now() / 1000);
    await stopXapi(x, true);
    y = await startXapi({ stateDir: x.stateDir, address: x.address, httpPort: x.httpPort, httpsPort: x.httpsPort, args: FAST });
    const s2 = await login(y.url, PASSWORD);
    const text = (await fetchText(`${y.url}/rrd_updates?session_id=${s2}&cf=AVERAGE&host=true&interval=5&json=true&start=${before - 120}`))
      .body;
    const rows = JSON.parse(text) as { data: { t: number; values: unknown[] }[]; meta: { legend: string[] } };
    const col = rows.meta.legend.indexOf(`AVERAGE:vm:${busyUuid}:cpu0`);
    assert.ok(col >= 0);
    assert.ok(
      rows.data.some((r) => r.t <= before && typeof r.values[col] === 'number' && (r.values[col] as number) > 0.5),
      'the busy rows from before the restart',
    );
  } finally {
    if (y) await stopXapi(y);
    else await stopXapi(x);
    await rm(x.stateDir, { recursive: true, force: true });
  }
});

test('a pool: /vm_rrd for a member VM asked of the coordinator; the RRD follows a migration', { timeout: 240_000 }, async () => {
  const pool = await startPool(2, { args: FAST });
  try {
    const { coordinator: c, members, session: s } = pool;
    const m = members[0]!;
    const call = (meth: string, ...p: unknown[]) => jsonCall(c.url, meth, [s, ...p]);
    const vm = (await call(
      'VM.create',
      vmRecord('roamer', { memory: 128 * MiB }, { other_config: { simulator_cpu_load: '0.8' } }),
    )) as string;
    const uuid = (await call('VM.get_uuid', vm)) as string;
    await call('VM.start_on', vm, await hostRef(c, s, m), false, false);
    // asked of the coordinator: sent to the member, which has it
    const redirected = await waitUntil('the member to have the VM RRD', async () => {
      const r = await fetchText(`${c.url}/vm_rrd?session_id=${s}&uuid=${uuid}`);
      if (r.status !== 302) return undefined;
      const r2 = await fetchText(String(r.headers.location));
      return r2.status === 200 && r2.body.includes('<name>cpu0</name>') ? { r, r2 } : undefined;
    });
    assert.match(String(redirected.r.headers.location), new RegExp(`^https://${m.address.replace(/\./g, '\\.')}:${m.httpsPort}/vm_rrd\\?`));
    // the data-source calls reach the member through the coordinator
    // (NaN until the member has two readings: JSON-RPC's NaN, read as a string)
    await waitUntil(
      'a busy cpu0 on the member',
      async () => Number(await lenientCall(c.url, 'VM.query_data_source', [s, vm, 'cpu0'])) > 0.5,
    );
    const migratedAt = Math.floor(Date.now() / 1000);
    await call('VM.pool_migrate', vm, await hostRef(c, s, c), {});
    // the coordinator has it now, with the rows the member recorded
    await waitUntil('the RRD on the coordinator with the rows from the member', async () => {
      const r = await fetchText(
        `${c.url}/rrd_updates?session_id=${s}&cf=AVERAGE&interval=5&json=true&vm_uuid=${uuid}&start=${migratedAt - 120}`,
      );
      const rows = JSON.parse(r.body) as { data: { t: number; values: unknown[] }[]; meta: { legend: string[] } };
      const col = rows.meta.legend.indexOf(`AVERAGE:vm:${uuid}:cpu0`);
      return (
        col >= 0 && rows.data.some((row) => row.t <= migratedAt && typeof row.values[col] === 'number' && (row.values[col] as number) > 0.5)
      );
    });
    // the member has it no more: a VM stopped on a member is archived with the coordinator
    const r = await fetchText(`${m.httpsUrl}/vm_rrd?session_id=${s}&uuid=${uuid}`);
    assert.equal(r.status, 302);
    const other = (await call('VM.create', vmRecord('stopper', { memory: 128 * MiB }))) as string;
    const otherUuid = (await call('VM.get_uuid', other)) as string;
    await call('VM.start_on', other, await hostRef(c, s, m), false, false);
    await waitUntil(
      'the member to record the VM',
      async () => (await fetchText(`${m.httpsUrl}/vm_rrd?session_id=${s}&uuid=${otherUuid}`)).status === 200,
    );
    await call('VM.hard_shutdown', other);
    await waitUntil('the RRD archived on the coordinator', () => existsSync(join(c.stateDir, 'rrds', `${otherUuid}.gz`)));
    // asked of the member now: sent to the coordinator's archive
    const fromMember = await fetchText(`${m.httpsUrl}/vm_rrd?session_id=${s}&uuid=${otherUuid}`);
    assert.equal(fromMember.status, 302);
    assert.match(String(fromMember.headers.location), /rrd_unarchive=/);
    assert.equal((await fetchText(String(fromMember.headers.location))).status, 200);
  } finally {
    await pool.stop();
  }
});
