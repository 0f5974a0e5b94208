// The storage-manager driver interface, modelled on SMAPIv1 (xapi's sm.ml / sm_exec.ml): one
// driver per SR type, called with the SR's identity and device_config, answering what the SM
// scripts answer. Drivers know nothing of the database: xapi (src/xapi/sr.ts, vdi.ts, pbd.ts)
// turns their answers into records, as xapi does with the results of SM calls.
import type { Vhd } from './vhd/index.js';

/** The SR as a driver sees it: its uuid and its PBD's device_config (with SRmaster). */
export interface SrContext {
  uuid: string;
  deviceConfig: Record<string, string>;
  /** The pool the calling host belongs to (shared SRs remember their owning pool). */
  poolUuid: string;
  /**
   * Whether the SR is shared. Only a shared SR is held to its owning pool: a local SR goes with
   * its host, into the pool the host joins.
   */
  shared?: boolean;
}

/** What an SM call says about one VDI (vdi_create / scan / stat results). */
export interface VdiInfo {
  uuid: string;
  location: string;
  virtualSize: number;
  physicalUtilisation: number;
  readOnly: boolean;
  /** The uuid of the VHD parent node (sm_config "vhd-parent"), when the VDI is a differencing disk. */
  vhdParent?: string;
  /** sm_config "vdi_type". */
  vdiType: 'vhd' | 'iso' | 'raw';
}

export interface SrStat {
  physicalSize: number;
  physicalUtilisation: number;
  /** Bytes a write can still get, when the filesystem has less than size − utilisation (it holds other data too). */
  free?: number;
}

/** A VDI's data opened for I/O (import/export, the simulator's guest workload). */
export interface OpenDisk {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
  /** The VHD chain when the VDI is VHD-backed (for sparse and delta export). */
  readonly vhd?: Vhd;
}

/**
 * An SM driver's failure, as the SM scripts report them (an XML-RPC fault code and string):
 * xapi's Sm_exec maps the well-known codes to XenAPI errors (see storageError in src/xapi/sr.ts).
 */
export class SmError extends Error {
  constructor(
    /** A XenAPI error code, or SR_BACKEND_FAILURE_<n> for driver fault n. */
    readonly code: string,
    readonly params: string[],
  ) {
    super(`${code}(${params.join(', ')})`);
  }
}

export interface SmDriver {
  readonly type: string;
  /** SMAPIv1 capability names (the SM record's features). */
  readonly features: Readonly<Record<string, number>>;
  /** sr_create: makes the SR's storage; returns the device_config to store in every PBD. */
  create(sr: SrContext, physicalSize: number): Promise<Record<string, string>>;
  delete(sr: SrContext): Promise<void>;
  attach(sr: SrContext): Promise<void>;
  detach(sr: SrContext): Promise<void>;
  /** sr_probe: the SRlist XML of what lives at this device_config. */
  probe(deviceConfig: Record<string, string>): Promise<string>;
  /** sr_scan: the VDIs users see (hidden VHD nodes are not VDIs). */
  scan(sr: SrContext): Promise<VdiInfo[]>;
  stat(sr: SrContext): Promise<SrStat>;
  vdiCreate(sr: SrContext, size: number, hint: { nameLabel: string }): Promise<VdiInfo>;
  vdiDelete(sr: SrContext, location: string): Promise<void>;
  vdiStat(sr: SrContext, location: string): Promise<VdiInfo>;
  vdiIntroduce(sr: SrContext, location: string): Promise<VdiInfo>;
  vdiResize(sr: SrContext, location: string, size: number): Promise<VdiInfo>;
  /** Snapshot (read-only leaf) or clone (writable leaf) over a new hidden parent. */
  vdiSnapshot(sr: SrContext, location: string, kind: 'snapshot' | 'clone'): Promise<VdiInfo>;
  /** set_on_boot (drivers with VDI_RESET_ON_BOOT): `reset` makes the current content what each boot starts from. */
  vdiSetOnBoot?(sr: SrContext, location: string, mode: 'persist' | 'reset'): Promise<void>;
  /** At the attach of an on_boot=reset VDI: its writes since are discarded. */
  vdiReset?(sr: SrContext, location: string): Promise<void>;
  /** vdi_attach: where the data lives for a domain (a VHD leaf, an ISO file). */
  vdiAttach(sr: SrContext, location: string, writable: boolean): Promise<{ path: string; format: 'vhd' | 'raw' }>;
  /**
   * Opens the VDI's data for the data path (import/export, copy). `deferSync`: one fsync at
   * close instead of crash-ordered writes, for targets nothing reads until the close succeeded.
   */
  vdiOpen(sr: SrContext, location: string, opts: { readOnly: boolean; deferSync?: boolean }): Promise<OpenDisk>;
  /**
   * Background garbage collection and coalesce, on the SR master only (none for ISO SRs).
   * `inUse`: the locations xapi says are in use right now; asked again before every step.
   */
  gc?(sr: SrContext, opts: { inUse(): Promise<ReadonlySet<string>> }): Promise<{ changed: boolean }>;
}
