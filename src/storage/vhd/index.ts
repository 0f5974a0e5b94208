// VHD (Microsoft Virtual Hard Disk v1.0) dynamic and differencing disks, as XenServer uses them.
export { Vhd, open, createDynamic, createDifferencing, coalesceInto, type VhdType, type CreateOptions } from './vhd.js';
export * as format from './format.js';
export {
  exportRaw,
  exportVhd,
  vhdStreamSize,
  importRaw,
  importVhd,
  progressReporter,
  ImportError,
  type ImportErrorCode,
  type ExportStream,
  type ImportTarget,
  type VhdImportTarget,
} from './stream.js';
