// Disk device names and numbers as xapi reads a VBD's userdevice (xapi-idl's Device_number and
// xapi_vm_helpers.ml): "0", "xvdb", "hda", "sdc1", "fda", "d3p1" all name a (bus, disk,
// partition); a plain number means an IDE disk for the first four disks of an HVM guest and a Xen
// one otherwise. Two VBDs clash when any reading of one equals any reading of the other.

export type Bus = 'Xen' | 'Scsi' | 'Floppy' | 'Ide';
export interface DeviceNumber {
  bus: Bus;
  disk: number;
  partition: number;
}

const LIMITS: Record<Bus, [disk: number, partition: number]> = {
  Xen: [(1 << 20) - 1, 15],
  Scsi: [15, 15],
  Floppy: [2, 0],
  // xapi keeps Linux's deprecated IDE encoding, which reaches disk 19.
  Ide: [19, 63],
};

export function makeDevice(bus: Bus, disk: number, partition: number): DeviceNumber | undefined {
  const [maxDisk, maxPartition] = LIMITS[bus];
  return disk >= 0 && disk <= maxDisk && partition >= 0 && partition <= maxPartition ? { bus, disk, partition } : undefined;
}

/** OCaml's int_of_string: a sign, then decimal, 0x, 0o or 0b digits with `_` separators. */
export function ocamlInt(text: string): number | undefined {
  const m = /^([-+]?)(?:0[xX]([0-9a-fA-F][0-9a-fA-F_]*)|0[oO]([0-7][0-7_]*)|0[bB]([01][01_]*)|([0-9][0-9_]*))$/.exec(text);
  if (!m) return undefined;
  const [, sign, hex, oct, bin, dec] = m;
  const digits = (hex ?? oct ?? bin ?? dec)!.replace(/_/g, '');
  const radix = hex ? 16 : oct ? 8 : bin ? 2 : 10;
  const value = parseInt(digits, radix);
  // Beyond what a 63-bit OCaml int holds the conversion fails; such values never name a device.
  if (!Number.isSafeInteger(value)) return undefined;
  return sign === '-' ? -value : value;
}

function ofDiskNumber(hvm: boolean, n: number): DeviceNumber | undefined {
  return makeDevice(hvm && n < 4 ? 'Ide' : 'Xen', n, 0);
}

/** "xvdb1" etc: a bus prefix, the disk in base 26 from "a", an optional partition number. */
function ofLinuxDevice(name: string): DeviceNumber | undefined {
  const letters = (bus: Bus, rest: string) => {
    // No letters read as disk -1, as Device_number does.
    const m = /^([a-z]*)([0-9]*)$/.exec(rest);
    if (!m) return undefined;
    let disk = 0;
    for (const c of m[1]!) disk = disk * 26 + (c.charCodeAt(0) - 96);
    return { bus, disk: disk - 1, partition: m[2] === '' ? 0 : Number(m[2]) };
  };
  let parsed: DeviceNumber | undefined;
  if (name.startsWith('xvd')) parsed = letters('Xen', name.slice(3));
  else if (name.startsWith('sd')) parsed = letters('Scsi', name.slice(2));
  else if (name.startsWith('fd')) parsed = letters('Floppy', name.slice(2));
  else if (name.startsWith('hd')) parsed = letters('Ide', name.slice(2));
  else if (name.startsWith('d')) {
    const m = /^d([0-9]+)(?:p([0-9]+))?$/.exec(name);
    if (m) parsed = { bus: 'Xen', disk: Number(m[1]), partition: m[2] === undefined ? 0 : Number(m[2]) };
  }
  // Device_number.of_linux_device keeps what it parsed without a range check.
  return parsed;
}

/** Device_number.of_string: a number (read as of_disk_number), else a Linux device name. */
export function parseDevice(name: string, hvm: boolean): DeviceNumber | undefined {
  const n = ocamlInt(name);
  return (n === undefined ? undefined : ofDiskNumber(hvm, n)) ?? ofLinuxDevice(name);
}

/** possible_VBD_devices_of_string: the readings of a name as an HVM and as a PV device. */
export function possibleDevices(name: string): DeviceNumber[] {
  return [parseDevice(name, true), parseDevice(name, false)].filter((d): d is DeviceNumber => d !== undefined);
}

export const sameDevice = (a: DeviceNumber, b: DeviceNumber) => a.bus === b.bus && a.disk === b.disk && a.partition === b.partition;

/** Xapi_vbd_helpers.valid_device: autodetect, a device name, or (but for floppies) any integer. */
export function validUserdevice(name: string, type: 'CD' | 'Disk' | 'Floppy'): boolean {
  return name === 'autodetect' || parseDevice(name, false) !== undefined || (type !== 'Floppy' && ocamlInt(name) !== undefined);
}

/** The devices a new VBD of `type` may take (allowed_VBD_devices before removing those in use). */
export function candidateDevices(
  type: 'CD' | 'Disk' | 'Floppy',
  hvm: boolean,
  controlDomain: boolean,
): DeviceNumber[] | 'floppy-unsupported' {
  const range = (hvmNumbering: boolean, last: number) =>
    Array.from({ length: last + 1 }, (_, n) => ofDiskNumber(hvmNumbering, n)).filter((d): d is DeviceNumber => d !== undefined);
  if (type === 'Floppy') return hvm ? [0, 1].map((disk) => makeDevice('Floppy', disk, 0)!) : 'floppy-unsupported';
  if (hvm) return range(true, 254);
  return range(false, controlDomain ? 255 : 254);
}

/** "fda", "xvdb"... (Device_number.to_linux_device). */
export function linuxDeviceName(d: DeviceNumber): string {
  const base26 = (x: number): string => {
    const high = Math.floor(x / 26) - 1;
    const low = String.fromCharCode(97 + (x % 26));
    return (high === -1 ? '' : base26(high)) + low;
  };
  const prefix = { Xen: 'xvd', Scsi: 'sd', Floppy: 'fd', Ide: 'xvd' }[d.bus];
  return `${prefix}${base26(d.disk)}${d.partition === 0 ? '' : d.partition}`;
}
