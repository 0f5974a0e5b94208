// The versions this build claims: the host's software_version (written at every start) and the
// header of every VM export carry them.
export const PRODUCT_VERSION = '8.4.0';
export const XAPI_VERSION = '25.0.0';
