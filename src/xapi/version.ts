// The versions this build claims: the host's software_version (written at every start) and the
// header of every VM export carry them.
export const PRODUCT_VERSION = '8.4.0';
export const XAPI_VERSION = '25.0.0';
/**
 * The database schema version of the datamodel we implement (xapi's schema_major_vsn.
 * schema_minor_vsn, in software_version's db_schema): pool.join refuses a host whose differs.
 */
export const DB_SCHEMA = '5.909';
