// The storage-manager drivers this project provides, as xapi lists them in SM records: the
// local file-based SR (ext: VHD files in a directory), the shared file-based SR (nfs: the same
// on a path several hosts see) and the read-only ISO library. Capabilities follow SMAPIv1 names.
const VHD_FEATURES: Record<string, number> = {
  SR_PROBE: 1,
  SR_UPDATE: 1,
  SR_SUPPORTS_LOCAL_CACHING: 1,
  VDI_CREATE: 1,
  VDI_DELETE: 1,
  VDI_ATTACH: 1,
  VDI_DETACH: 1,
  VDI_UPDATE: 1,
  VDI_CLONE: 1,
  VDI_SNAPSHOT: 1,
  VDI_RESIZE: 1,
  VDI_GENERATE_CONFIG: 1,
  VDI_MIRROR: 1,
  VDI_RESET_ON_BOOT: 2,
  VDI_CONFIG_CBT: 1,
  ATOMIC_PAUSE: 1,
  THIN_PROVISIONING: 1,
};

const common = {
  vendor: 'xapi-ts',
  copyright: '(C) xapi-ts contributors',
  version: '1.0',
  required_api_version: '1.0',
  other_config: {},
  required_cluster_stack: [],
};

export const SM_DRIVERS = [
  {
    ...common,
    type: 'ext',
    name_label: 'Local EXT3 VHD',
    name_description: 'SR plugin which represents disks as VHD files stored on a local path',
    configuration: { device: 'local device path (required) (e.g. /dev/sda3)' },
    capabilities: Object.keys(VHD_FEATURES),
    features: VHD_FEATURES,
    driver_filename: '/opt/xensource/sm/EXTSR',
  },
  {
    ...common,
    type: 'nfs',
    name_label: 'NFS VHD',
    name_description: 'SR plugin which stores disks as VHD files on a remote NFS filesystem',
    configuration: { server: 'hostname or IP address', serverpath: 'path on remote server' },
    capabilities: Object.keys(VHD_FEATURES),
    features: VHD_FEATURES,
    driver_filename: '/opt/xensource/sm/NFSSR',
  },
  {
    ...common,
    type: 'iso',
    name_label: 'ISO',
    name_description: 'Handles CD images stored as files in iso format',
    configuration: { location: 'path to mount (required) (e.g. server:/path)' },
    capabilities: ['VDI_CREATE', 'VDI_DELETE', 'VDI_ATTACH', 'VDI_DETACH', 'SR_SCAN', 'SR_ATTACH', 'SR_DETACH'],
    features: { VDI_CREATE: 1, VDI_DELETE: 1, VDI_ATTACH: 1, VDI_DETACH: 1, SR_SCAN: 1, SR_ATTACH: 1, SR_DETACH: 1 },
    driver_filename: '/opt/xensource/sm/ISOSR',
  },
];
