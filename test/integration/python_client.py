#!/usr/bin/env python3
"""Talks to a running xapi-ts host the way XenAPI.py does: only the standard library's
xmlrpc.client (ServerProxy with allow_none=True, over HTTP and over HTTPS with an unverified
SSL context), plus the JSON-RPC endpoint through urllib + json.

Environment: XAPI_URL (http://addr:port), XAPI_HTTPS_URL (https://addr:port), XAPI_PASSWORD.
Prints one line per check; any failed check raises AssertionError (exit status 1).
"""
import calendar
import json
import os
import re
import ssl
import sys
import time
import urllib.request
import uuid as uuidlib
import xmlrpc.client

URL = os.environ["XAPI_URL"]
HTTPS_URL = os.environ["XAPI_HTTPS_URL"]
PASSWORD = os.environ["XAPI_PASSWORD"]

REF = re.compile(r"^OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DIGITS = re.compile(r"^-?[0-9]+$")
XAPI_DATETIME = re.compile(r"^[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")

checks = 0


def check(name, cond, detail=None):
    """One printed line per check; a failure stops the script with the details."""
    global checks
    checks += 1
    if not cond:
        print("FAIL %d - %s%s" % (checks, name, "" if detail is None else ": %r" % (detail,)), flush=True)
        raise AssertionError(name if detail is None else "%s: %r" % (name, detail))
    print("ok %d - %s" % (checks, name), flush=True)


def success(name, r):
    """Asserts the XenAPI success envelope and returns its Value."""
    assert isinstance(r, dict), "%s: not a struct: %r" % (name, r)
    assert list(r.keys()) == ["Status", "Value"] and r["Status"] == "Success", "%s: %r" % (name, r)
    return r["Value"]


def failure(name, r, expected):
    """Asserts the XenAPI failure envelope with exactly `expected` as ErrorDescription."""
    check(
        name,
        isinstance(r, dict)
        and list(r.keys()) == ["Status", "ErrorDescription"]
        and r["Status"] == "Failure"
        and r["ErrorDescription"] == expected,
        {"got": r, "expected": expected},
    )


def wait_task(proxy, session, task, timeout=30.0):
    """The task's record once it has left 'pending', woken by event.from on the task (the way
    XenAPI clients wait for tasks) rather than by polling; fails after `timeout` seconds."""
    deadline = time.time() + timeout
    token = ""
    event_from = getattr(proxy.event, "from")  # `from` is a Python keyword
    while True:
        rec = success("task.get_record", proxy.task.get_record(session, task))
        if rec["status"] != "pending":
            return rec
        left = deadline - time.time()
        if left <= 0:
            check("task %s finishes within %ds" % (task, timeout), False, rec)
        # The first call (empty token) answers at once; later ones block until the task changes.
        token = success("event.from", event_from(session, ["task/" + task], token, min(left, 10.0)))["token"]


def is_ref(v):
    return isinstance(v, str) and REF.match(v) is not None


def is_int_string(v):
    return isinstance(v, str) and DIGITS.match(v) is not None


def is_datetime(v):
    return isinstance(v, xmlrpc.client.DateTime) and XAPI_DATETIME.match(v.value) is not None


# ---------------------------------------------------------------------------------------------
# Connections, as XenAPI.Session does (ServerProxy subclass, allow_none=True)

xapi = xmlrpc.client.ServerProxy(URL, allow_none=True)
xapi_https = xmlrpc.client.ServerProxy(HTTPS_URL, allow_none=True, context=ssl._create_unverified_context())

# ---------------------------------------------------------------------------------------------
# Login

r = xapi.session.login_with_password("root", PASSWORD)
check(
    "login_with_password(user, pw) over HTTP returns {'Status': 'Success', 'Value': 'OpaqueRef:...'}",
    isinstance(r, dict) and list(r.keys()) == ["Status", "Value"] and r["Status"] == "Success" and is_ref(r["Value"]),
    r,
)
session = r["Value"]

r = xapi.session.login_with_password("root", PASSWORD, "2.23", "python-client.test")
check(
    "login_with_password(user, pw, version, originator) returns a success envelope",
    isinstance(r, dict) and list(r.keys()) == ["Status", "Value"] and r["Status"] == "Success" and is_ref(r["Value"]),
    r,
)
session4 = r["Value"]
check("the two logins give different sessions", session4 != session)

r = xapi_https.session.login_with_password("root", PASSWORD, "2.23", "python-client.test")
check(
    "login over HTTPS (unverified SSL context) returns a success envelope",
    isinstance(r, dict) and r.get("Status") == "Success" and is_ref(r.get("Value")),
    r,
)
session_https = r["Value"]
hosts_https = success("host.get_all over HTTPS", xapi_https.host.get_all(session_https))
check("host.get_all over HTTPS returns a list of refs", isinstance(hosts_https, list) and len(hosts_https) == 1 and is_ref(hosts_https[0]), hosts_https)
check("a session made over HTTPS works over HTTP", success("host.get_all", xapi.host.get_all(session_https)) == hosts_https)

r = xapi.session.login_with_password("root", "not-the-password")
check(
    "a wrong password gives Failure SESSION_AUTHENTICATION_FAILED",
    isinstance(r, dict) and r.get("Status") == "Failure" and r["ErrorDescription"][0] == "SESSION_AUTHENTICATION_FAILED",
    r,
)

# ---------------------------------------------------------------------------------------------
# Type encoding of records

hosts = success("host.get_all_records", xapi.host.get_all_records(session))
check("host.get_all_records returns a dict of one record keyed by ref", isinstance(hosts, dict) and len(hosts) == 1 and all(is_ref(k) for k in hosts), list(hosts))
host_ref, host = next(iter(hosts.items()))
check("host.get_all_records keys are the same refs as host.get_all", [host_ref] == hosts_https)
check("int64 field API_version_major arrives as a str of digits", is_int_string(host["API_version_major"]), host["API_version_major"])
check("int64 field API_version_minor arrives as a str of digits", is_int_string(host["API_version_minor"]), host["API_version_minor"])
check("int64 field memory_overhead arrives as a str of digits", is_int_string(host["memory_overhead"]), host["memory_overhead"])
check("bool field enabled arrives as a Python bool", type(host["enabled"]) is bool, host["enabled"])
check("bool field https_only arrives as a Python bool", type(host["https_only"]) is bool, host["https_only"])
check("map field other_config arrives as a dict", type(host["other_config"]) is dict, host["other_config"])
check("map field software_version arrives as a dict of str", type(host["software_version"]) is dict and all(isinstance(v, str) for v in host["software_version"].values()), host["software_version"])
check("set field PIFs arrives as a list of refs", type(host["PIFs"]) is list and all(is_ref(x) for x in host["PIFs"]), host["PIFs"])
check("set field tags arrives as a list", type(host["tags"]) is list, host["tags"])
check("ref field metrics arrives as an 'OpaqueRef:' str", is_ref(host["metrics"]), host["metrics"])
check("ref fields crash_dump_sr/suspend_image_sr/local_cache_sr are 'OpaqueRef:NULL' or refs", all(
    host[f] == "OpaqueRef:NULL" or is_ref(host[f]) for f in ("crash_dump_sr", "suspend_image_sr", "local_cache_sr")
))
check("string field uuid is a str uuid", isinstance(host["uuid"], str) and str(uuidlib.UUID(host["uuid"])) == host["uuid"], host["uuid"])
check("datetime field last_software_update arrives as xmlrpc.client.DateTime", is_datetime(host["last_software_update"]), host["last_software_update"])

metrics = success("host_metrics.get_record", xapi.host_metrics.get_record(session, host["metrics"]))
lu = metrics["last_updated"]
check(
    "host_metrics.last_updated is an xmlrpc.client.DateTime with value YYYYMMDDTHH:MM:SSZ",
    is_datetime(lu),
    getattr(lu, "value", lu),
)
check("host_metrics.memory_total is a str of digits", is_int_string(metrics["memory_total"]), metrics["memory_total"])
check("host_metrics.live is a bool", type(metrics["live"]) is bool, metrics["live"])

vms = success("VM.get_all_records", xapi.VM.get_all_records(session))
dom0 = [(ref, vm) for ref, vm in vms.items() if vm["is_control_domain"] is True]
check("there is exactly one control domain, its is_control_domain a bool", len(dom0) == 1, [v["name_label"] for v in vms.values()])
dom0_ref, dom0_rec = dom0[0]
check("enum power_state of the control domain is 'Running' (datamodel casing)", dom0_rec["power_state"] == "Running", dom0_rec["power_state"])
check("host.control_domain is the control domain's ref", host["control_domain"] == dom0_ref, (host["control_domain"], dom0_ref))
check("VM int64 field memory_static_max is a str of digits", is_int_string(dom0_rec["memory_static_max"]), dom0_rec["memory_static_max"])
check("VM int64 field VCPUs_max is a str of digits", is_int_string(dom0_rec["VCPUs_max"]), dom0_rec["VCPUs_max"])
check("VM resident_on is the host ref", dom0_rec["resident_on"] == host_ref, dom0_rec["resident_on"])
check("VM.get_power_state returns 'Running'", success("VM.get_power_state", xapi.VM.get_power_state(session, dom0_ref)) == "Running")
check("alternative wire name VM_get_all is accepted", dom0_ref in success("VM_get_all", xapi.VM_get_all(session)))

# ---------------------------------------------------------------------------------------------
# Errors, with exact parameters

bogus_session = "OpaqueRef:" + str(uuidlib.uuid4())
failure("SESSION_INVALID [ref] for an unknown session", xapi.VM.get_all(bogus_session), ["SESSION_INVALID", bogus_session])
bogus_vm = "OpaqueRef:" + str(uuidlib.uuid4())
failure("HANDLE_INVALID ['VM', ref] for an unknown VM ref", xapi.VM.get_record(session, bogus_vm), ["HANDLE_INVALID", "VM", bogus_vm])
bogus_uuid = str(uuidlib.uuid4())
failure("UUID_INVALID ['VM', uuid] for an unknown VM uuid", xapi.VM.get_by_uuid(session, bogus_uuid), ["UUID_INVALID", "VM", bogus_uuid])
failure(
    "MESSAGE_PARAMETER_COUNT_MISMATCH ['VM.get_record', '1', '0']",
    xapi.VM.get_record(session),
    ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "0"],
)
failure(
    "MESSAGE_PARAMETER_COUNT_MISMATCH ['VM.get_record', '1', '2'] for an extra param",
    xapi.VM.get_record(session, dom0_ref, "extra"),
    ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "2"],
)
failure("MESSAGE_METHOD_UNKNOWN ['VM.nonexistent'] without params", xapi.VM.nonexistent(), ["MESSAGE_METHOD_UNKNOWN", "VM.nonexistent"])
failure("MESSAGE_METHOD_UNKNOWN ['VM.nonexistent'] with a session", xapi.VM.nonexistent(session), ["MESSAGE_METHOD_UNKNOWN", "VM.nonexistent"])
failure(
    "an unknown method with a bad session gives SESSION_INVALID",
    xapi.VM.nonexistent(bogus_session),
    ["SESSION_INVALID", bogus_session],
)

key = "python-client-" + str(uuidlib.uuid4())[:8]
check("VM.add_to_other_config on the control domain succeeds", success("add", xapi.VM.add_to_other_config(session, dom0_ref, key, "1")) == "")
failure(
    "MAP_DUPLICATE_KEY ['VM', 'other_config', ref, key] when the key exists",
    xapi.VM.add_to_other_config(session, dom0_ref, key, "2"),
    ["MAP_DUPLICATE_KEY", "VM", "other_config", dom0_ref, key],
)
check("the duplicate add did not change the value", success("get", xapi.VM.get_other_config(session, dom0_ref)).get(key) == "1")
check("VM.remove_from_other_config succeeds", success("remove", xapi.VM.remove_from_other_config(session, dom0_ref, key)) == "")
check("the key is gone", key not in success("get", xapi.VM.get_other_config(session, dom0_ref)))
check("removing an absent key is not an error", success("remove", xapi.VM.remove_from_other_config(session, dom0_ref, key)) == "")

# ---------------------------------------------------------------------------------------------
# Create, setters, add_to/remove_from round-trips (Python ints are sent as <int>)

net = success(
    "network.create",
    xapi.network.create(session, {"name_label": "py-net", "name_description": "from python", "MTU": 1500, "other_config": {"a": "1"}}),
)
check("network.create (MTU sent as Python int) returns a ref", is_ref(net), net)
check("network.get_MTU == '1500'", success("get_MTU", xapi.network.get_MTU(session, net)) == "1500")
rec = success("network.get_record", xapi.network.get_record(session, net))
check("the new network's record has the fields sent", rec["name_label"] == "py-net" and rec["name_description"] == "from python" and rec["other_config"] == {"a": "1"}, rec)
check("network.get_by_uuid gives the ref back", success("get_by_uuid", xapi.network.get_by_uuid(session, rec["uuid"])) == net)

success("set_MTU int", xapi.network.set_MTU(session, net, 9000))
check("network.set_MTU(9000 as <int>) then get_MTU == '9000'", success("get_MTU", xapi.network.get_MTU(session, net)) == "9000")
success("set_MTU str", xapi.network.set_MTU(session, net, "1400"))
check("network.set_MTU('1400' as a decimal string) is accepted", success("get_MTU", xapi.network.get_MTU(session, net)) == "1400")

success("set_name_label", xapi.network.set_name_label(session, net, "renamed"))
check("set_name_label round-trips", success("get", xapi.network.get_name_label(session, net)) == "renamed")
success("set_name_description", xapi.network.set_name_description(session, net, "line1\nline2 <&> \"q\""))
check(
    "set_name_description round-trips newlines and XML specials",
    success("get", xapi.network.get_name_description(session, net)) == "line1\nline2 <&> \"q\"",
)
unicode_label = "ñ 日本 😀"
success("set_name_label unicode", xapi.network.set_name_label(session, net, unicode_label))
check("unicode 'ñ 日本 😀' round-trips through set_name_label", success("get", xapi.network.get_name_label(session, net)) == unicode_label)
check(
    "the unicode label is found by get_by_name_label",
    success("get_by_name_label", xapi.network.get_by_name_label(session, unicode_label)) == [net],
)

success("set_other_config", xapi.network.set_other_config(session, net, {"x": "1", "y": "2"}))
check("set_other_config round-trips a dict", success("get", xapi.network.get_other_config(session, net)) == {"x": "1", "y": "2"})
success("add_to_other_config", xapi.network.add_to_other_config(session, net, "z", "3"))
check("add_to_other_config adds a key", success("get", xapi.network.get_other_config(session, net)) == {"x": "1", "y": "2", "z": "3"})
success("remove_from_other_config", xapi.network.remove_from_other_config(session, net, "x"))
check("remove_from_other_config removes a key", success("get", xapi.network.get_other_config(session, net)) == {"y": "2", "z": "3"})
failure(
    "MAP_DUPLICATE_KEY on network.add_to_other_config with an existing key",
    xapi.network.add_to_other_config(session, net, "y", "9"),
    ["MAP_DUPLICATE_KEY", "network", "other_config", net, "y"],
)

success("add_tags", xapi.network.add_tags(session, net, "t1"))
success("add_tags", xapi.network.add_tags(session, net, "t2"))
success("add_tags again", xapi.network.add_tags(session, net, "t1"))
check("add_tags (set add_to) round-trips as a list without duplicates", sorted(success("get", xapi.network.get_tags(session, net))) == ["t1", "t2"])
success("remove_tags", xapi.network.remove_tags(session, net, "t1"))
check("remove_tags removes the tag", success("get", xapi.network.get_tags(session, net)) == ["t2"])
success("set_tags", xapi.network.set_tags(session, net, []))
check("set_tags([]) empties the set", success("get", xapi.network.get_tags(session, net)) == [])

# ---------------------------------------------------------------------------------------------
# Async calls and tasks

task = success(
    "Async.network.create",
    xapi.Async.network.create(session, {"name_label": "py-async", "name_description": "", "MTU": 1500, "other_config": {}}),
)
check("Async.network.create returns a task ref", is_ref(task), task)
trec = wait_task(xapi, session, task)
check("the task finishes with status 'success'", trec["status"] == "success", trec)
m = re.match(r"^<value>(OpaqueRef:[0-9a-f-]+)</value>$", trec["result"])
check("task result is '<value>OpaqueRef:...</value>'", m is not None, trec["result"])
check("the task result is the new network", success("get", xapi.network.get_name_label(session, m.group(1))) == "py-async")
check("task progress is a float 1.0", type(trec["progress"]) is float and trec["progress"] == 1.0, trec["progress"])
check("task created/finished are DateTimes", is_datetime(trec["created"]) and is_datetime(trec["finished"]), (trec["created"], trec["finished"]))
check("task name_label is the wire name", trec["name_label"] == "Async.network.create", trec["name_label"])
check("task error_info is an empty list", trec["error_info"] == [], trec["error_info"])
check("task status via task.get_status is 'success'", success("get_status", xapi.task.get_status(session, task)) == "success")
check("task.get_result gives the same fragment", success("get_result", xapi.task.get_result(session, task)) == trec["result"])

failing = success("Async.network.destroy of an unknown network", xapi.Async.network.destroy(session, "OpaqueRef:" + str(uuidlib.uuid4())))
frec = wait_task(xapi, session, failing)
check(
    "a failing async call ends with status 'failure' and error_info [CODE, ...]",
    frec["status"] == "failure" and frec["error_info"][:2] == ["HANDLE_INVALID", "network"],
    (frec["status"], frec["error_info"]),
)
success("task.destroy", xapi.task.destroy(session, task))
failure("a destroyed task is HANDLE_INVALID", xapi.task.get_record(session, task), ["HANDLE_INVALID", "task", task])

r = xapi.Async.session.get_uuid(session, session)
check(
    "Async on a session message gives ['Fault', 'No async mode ...']",
    isinstance(r, dict) and r.get("Status") == "Failure" and r["ErrorDescription"][0] == "Fault",
    r,
)

# ---------------------------------------------------------------------------------------------
# Messages clients call routinely: the server clock, the licence state, plugins

before = time.time()
servertime = success("host.get_servertime", xapi.host.get_servertime(session, host_ref))
check("host.get_servertime is an XML-RPC DateTime in xapi's UTC form", is_datetime(servertime), servertime)
stamp = calendar.timegm(time.strptime(servertime.value, "%Y%m%dT%H:%M:%SZ"))
check("host.get_servertime is the server's clock", int(before) - 1 <= stamp <= time.time() + 1, (servertime.value, before))
localtime = success("host.get_server_localtime", xapi.host.get_server_localtime(session, host_ref))
check(
    "host.get_server_localtime is a DateTime without a zone",
    isinstance(localtime, xmlrpc.client.DateTime) and re.match(r"^[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}$", localtime.value) is not None,
    localtime,
)
pool_ref = success("pool.get_all", xapi.pool.get_all(session))[0]
check(
    "pool.get_license_state of an XCP-ng host",
    success("pool.get_license_state", xapi.pool.get_license_state(session, pool_ref)) == {"edition": "xcp-ng", "expiry": "never"},
)
failure(
    "host.call_plugin of a plugin the host does not have",
    xapi.host.call_plugin(session, host_ref, "no-such-plugin.py", "main", {"a": "1"}),
    ["XENAPI_MISSING_PLUGIN", "no-such-plugin.py"],
)

# ---------------------------------------------------------------------------------------------
# system.listMethods (bare value, no Status wrapper)

methods = xapi.system.listMethods()
check("system.listMethods returns a bare list of strings", type(methods) is list and all(isinstance(x, str) for x in methods) and len(methods) > 100, type(methods))
check("system.listMethods includes VM.start and session.login_with_password", "VM.start" in methods and "session.login_with_password" in methods)
check("system.listMethods lists no Async. names", not any(x.startswith("Async.") for x in methods))

# ---------------------------------------------------------------------------------------------
# JSON-RPC from urllib + json


def json_rpc(body):
    req = urllib.request.Request(URL + "/jsonrpc", data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        ctype = resp.headers.get("Content-Type", "")
        return resp.status, ctype, json.loads(resp.read().decode("utf-8"))


status, ctype, body = json_rpc({"jsonrpc": "2.0", "method": "session.login_with_password", "params": ["root", PASSWORD], "id": "py-1"})
check(
    "JSON-RPC 2.0 login gives {'jsonrpc': '2.0', 'result': ref, 'id': 'py-1'}",
    status == 200 and ctype.startswith("application/json") and sorted(body) == ["id", "jsonrpc", "result"] and body["jsonrpc"] == "2.0" and is_ref(body["result"]) and body["id"] == "py-1",
    (status, ctype, body),
)
json_session = body["result"]
status, ctype, body = json_rpc({"method": "session.login_with_password", "params": ["root", PASSWORD], "id": 7})
check(
    "JSON-RPC 1.0 login gives {'result': ref, 'error': None, 'id': 7}",
    status == 200 and sorted(body) == ["error", "id", "result"] and is_ref(body["result"]) and body["error"] is None and body["id"] == 7,
    body,
)
status, ctype, body = json_rpc({"jsonrpc": "2.0", "method": "VM.get_record", "params": [json_session, bogus_vm], "id": 8})
check(
    "JSON-RPC 2.0 failure gives error {'code': 1, 'message': CODE, 'data': params}",
    body == {"jsonrpc": "2.0", "error": {"code": 1, "message": "HANDLE_INVALID", "data": ["VM", bogus_vm]}, "id": 8},
    body,
)
status, ctype, body = json_rpc({"method": "VM.get_record", "params": [json_session, bogus_vm], "id": "v1"})
check(
    "JSON-RPC 1.0 failure gives {'result': None, 'error': [CODE, ...], 'id': 'v1'}",
    body == {"result": None, "error": ["HANDLE_INVALID", "VM", bogus_vm], "id": "v1"},
    body,
)
status, ctype, body = json_rpc({"jsonrpc": "2.0", "method": "host.get_record", "params": [session, host_ref], "id": 9})
jhost = body["result"]
check("an XML-RPC session works on JSON-RPC", isinstance(jhost, dict) and jhost["uuid"] == host["uuid"], body)
check("JSON-RPC ints are JSON integers (API_version_major)", type(jhost["API_version_major"]) is int and str(jhost["API_version_major"]) == host["API_version_major"], jhost["API_version_major"])
check("JSON-RPC bools are JSON booleans", type(jhost["enabled"]) is bool)
check("JSON-RPC datetimes are strings in the same format", jhost["last_software_update"] == host["last_software_update"].value, jhost["last_software_update"])
check("a JSON-RPC session works on XML-RPC", success("host.get_all", xapi.host.get_all(json_session)) == [host_ref])
status, ctype, body = json_rpc({"jsonrpc": "2.0", "method": "network.get_name_label", "params": [json_session, net], "id": 10})
check("the unicode label reads back through JSON-RPC", body.get("result") == unicode_label, body)
status, ctype, body = json_rpc({"jsonrpc": "2.0", "method": "system.listMethods", "params": [], "id": 11})
check("JSON-RPC system.listMethods gives the same list", isinstance(body.get("result"), list) and sorted(body["result"]) == sorted(methods))

# ---------------------------------------------------------------------------------------------
# Logout

check("session.logout succeeds with an empty value", success("logout", xapi.session.logout(session4)) == "")
failure("after logout the session is SESSION_INVALID", xapi.host.get_all(session4), ["SESSION_INVALID", session4])
failure("logging out twice is SESSION_INVALID", xapi.session.logout(session4), ["SESSION_INVALID", session4])
check("other sessions still work", success("host.get_all", xapi.host.get_all(session)) == [host_ref])

success("network.destroy", xapi.network.destroy(session, net))
failure("a destroyed network is HANDLE_INVALID", xapi.network.get_record(session, net), ["HANDLE_INVALID", "network", net])
success("logout", xapi.session.logout(session))
success("logout", xapi_https.session.logout(session_https))
success("logout", xapi.session.logout(json_session))

print("all %d checks passed" % checks, flush=True)
sys.exit(0)
