/*
 * glibc's malloc_trim(0), for node (Node-API, C). glibc gives freed heap memory back to the
 * system only from the top of its heap; memory freed below a block still in use stays resident.
 * malloc_trim(0) also releases every whole free page inside the heap. An idle host calls it after
 * its garbage collection (src/util/malloc-trim.ts). Elsewhere than glibc it does nothing.
 */
#include <node_api.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* trim(): true when memory was given back. */
static napi_value trim(napi_env env, napi_callback_info info) {
  (void)info;
  int released = 0;
#ifdef __GLIBC__
  released = malloc_trim(0);
#endif
  napi_value result;
  napi_get_boolean(env, released == 1, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "trim", NAPI_AUTO_LENGTH, trim, NULL, &fn);
  napi_set_named_property(env, exports, "trim", fn);
  return exports;
}
