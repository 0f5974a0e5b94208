// The SM drivers this project provides, by SR type, and the SM records xapi shows for them
// (what sm_exec's sr_get_driver_info returns: name, description, capabilities, configuration).
import type { SmDriver } from './driver.js';
import { FileSrDriver } from './file-sr.js';
import { IsoSrDriver } from './iso-sr.js';

export function makeDrivers(): Map<string, SmDriver> {
  const list: SmDriver[] = [new FileSrDriver('ext'), new FileSrDriver('file'), new FileSrDriver('nfs'), new IsoSrDriver()];
  return new Map(list.map((d) => [d.type, d]));
}

const DESCRIPTIONS: Record<
  string,
  { name_label: string; name_description: string; configuration: Record<string, string>; driver: string }
> = {
  ext: {
    name_label: 'Local EXT3 VHD',
    name_description: 'SR plugin which represents disks as VHD files stored on a local path',
    configuration: { device: 'local directory the SR lives under (xapi-ts does not format block devices)' },
    driver: 'EXTSR',
  },
  file: {
    name_label: 'Local Path VHD',
    name_description: 'SR plugin which represents disks as VHD files stored on a local path',
    configuration: { location: 'local directory path (required)' },
    driver: 'FileSR',
  },
  nfs: {
    name_label: 'NFS VHD',
    name_description: 'SR plugin which stores disks as VHD files on a remote NFS filesystem',
    configuration: { server: 'hostname or IP address', serverpath: 'path every host of the pool sees the export at' },
    driver: 'NFSSR',
  },
  iso: {
    name_label: 'ISO',
    name_description: 'Handles CD images stored as files in iso format',
    configuration: { location: 'path to mount (required) (e.g. server:/path)' },
    driver: 'ISOSR',
  },
};

/** The SM records of first start, one per driver. */
export function smRecords(): Record<string, unknown>[] {
  return [...makeDrivers().values()].map((d) => {
    const desc = DESCRIPTIONS[d.type]!;
    return {
      type: d.type,
      name_label: desc.name_label,
      name_description: desc.name_description,
      vendor: 'xapi-ts',
      copyright: '(C) xapi-ts contributors',
      version: '1.0',
      required_api_version: '1.0',
      configuration: desc.configuration,
      capabilities: Object.keys(d.features),
      features: d.features,
      driver_filename: `/opt/xensource/sm/${desc.driver}`,
      required_cluster_stack: [],
      other_config: {},
    };
  });
}
