(* Prints, as one JSON document on stdout, the evaluated reference datamodel: every class with
   its flags and fields, every message (explicit and generated) with the flags that decide how
   xapi serves it, the error declarations, relations, and the lists of datamodel.ml that the
   facts use. It is linked against the reference modules themselves (datamodel*.ml, dm_api,
   datamodel_utils, api_errors, constants and the code generator's gen_client and
   gen_empty_custom), so every value below is what xapi's own build computes.

   The output is raw material: tools/reference-facts/assemble.mjs turns it into the committed
   facts files. *)

open Datamodel_types

(* --- a small JSON writer --- *)

type json =
  | Null
  | Bool of bool
  | Int of int64
  | Float of float
  | Str of string
  | Arr of json list
  | Obj of (string * json) list

let escape s =
  let b = Buffer.create (String.length s + 2) in
  Buffer.add_char b '"' ;
  String.iter
    (fun c ->
      match c with
      | '"' ->
          Buffer.add_string b "\\\""
      | '\\' ->
          Buffer.add_string b "\\\\"
      | '\n' ->
          Buffer.add_string b "\\n"
      | '\r' ->
          Buffer.add_string b "\\r"
      | '\t' ->
          Buffer.add_string b "\\t"
      | c when Char.code c < 0x20 ->
          Buffer.add_string b (Printf.sprintf "\\u%04x" (Char.code c))
      | c ->
          Buffer.add_char b c
    )
    s ;
  Buffer.add_char b '"' ;
  Buffer.contents b

let rec write b = function
  | Null ->
      Buffer.add_string b "null"
  | Bool v ->
      Buffer.add_string b (string_of_bool v)
  | Int i ->
      Buffer.add_string b (Int64.to_string i)
  | Float f ->
      (* %.17g round-trips; JSON has no nan/inf and the datamodel has none *)
      Buffer.add_string b (Printf.sprintf "%.17g" f)
  | Str s ->
      Buffer.add_string b (escape s)
  | Arr xs ->
      Buffer.add_char b '[' ;
      List.iteri
        (fun i x ->
          if i > 0 then Buffer.add_char b ',' ;
          write b x
        )
        xs ;
      Buffer.add_char b ']'
  | Obj kvs ->
      Buffer.add_char b '{' ;
      List.iteri
        (fun i (k, v) ->
          if i > 0 then Buffer.add_char b ',' ;
          Buffer.add_string b (escape k) ;
          Buffer.add_char b ':' ;
          write b v
        )
        kvs ;
      Buffer.add_char b '}'

let strs xs = Arr (List.map (fun s -> Str s) xs)

let opt f = function None -> Null | Some x -> f x

(* --- datamodel values in the wire notation of the published datamodel export --- *)

let rec type_name = function
  | SecretString | String ->
      "string"
  | Int ->
      "int"
  | Float ->
      "float"
  | Bool ->
      "bool"
  | DateTime ->
      "datetime"
  | Enum (name, _) ->
      "enum " ^ name
  | Set t ->
      type_name t ^ " set"
  | Map (k, v) ->
      Printf.sprintf "(%s -> %s) map" (type_name k) (type_name v)
  | Ref c ->
      c ^ " ref"
  | Record c ->
      c ^ " record"
  | Option t ->
      type_name t ^ " option"

(* A default value as the JSON value a client would send. Map keys are printed as strings. *)
let rec value = function
  | VString s ->
      Str s
  | VInt i ->
      Int i
  | VFloat f ->
      Float f
  | VBool b ->
      Bool b
  | VDateTime d ->
      Str (Datamodel_types.Date.to_rfc3339 d)
  | VEnum e ->
      Str e
  | VRef r ->
      Str r
  | VSet vs ->
      Arr (List.map value vs)
  | VMap kvs ->
      Obj
        (List.map
           (fun (k, v) ->
             let key =
               match value k with
               | Str s ->
                   s
               | Int i ->
                   Int64.to_string i
               | _ ->
                   failwith "map default with a non-scalar key"
             in
             (key, value v)
           )
           kvs
        )

let qualifier_name = function
  | RW ->
      "RW"
  | StaticRO ->
      "StaticRO"
  | DynamicRO ->
      "DynamicRO"

let state_name (l : Lifecycle.t) =
  match l.state with
  | Unreleased_s ->
      "Unreleased"
  | Prototyped_s ->
      "Prototyped"
  | Published_s ->
      "Published"
  | Deprecated_s ->
      "Deprecated"
  | Removed_s ->
      "Removed"

let tag_name = function
  | Custom ->
      "Custom"
  | FromField (Getter, _) ->
      "Getter"
  | FromField (Setter, _) ->
      "Setter"
  | FromField (Add, _) ->
      "Add"
  | FromField (Remove, _) ->
      "Remove"
  | FromObject Make ->
      "Make"
  | FromObject Delete ->
      "Delete"
  | FromObject GetByUuid ->
      "GetByUuid"
  | FromObject GetByLabel ->
      "GetByLabel"
  | FromObject GetRecord ->
      "GetRecord"
  | FromObject GetAll ->
      "GetAll"
  | FromObject GetAllWhere ->
      "GetAllWhere"
  | FromObject GetAllRecordsWhere ->
      "GetAllRecordsWhere"
  | FromObject GetAllRecords ->
      "GetAllRecords"
  | FromObject (Private GetDBRecord) ->
      "PrivateGetDBRecord"
  | FromObject (Private GetDBAll) ->
      "PrivateGetDBAll"
  | FromObject (Private Copy) ->
      "PrivateCopy"

let roles = opt strs

let wire_field_name (f : field) = String.concat "_" f.full_name

(* --- the server's view: which messages xapi's generated dispatcher (server.ml) serves ---
   server.ml is generated from the API with implicit messages added, internal-only fields and
   db-only messages filtered out, messages restricted to the "closed" release (every release
   list includes it), then Gen_client.client_api ~sync:true. See gen_api_main.ml and the
   generator rule for server.ml in ocaml/xapi/dune. *)

let implicit_api = Datamodel_utils.add_implicit_messages Datamodel.all_api

let server_api =
  let api =
    Dm_api.filter_by
      ~field:(fun f -> not f.internal_only)
      ~message:(fun m ->
        (not m.msg_db_only) && List.mem "closed" m.msg_release.internal
      )
      implicit_api
  in
  Gen_client.client_api ~sync:true api

let served =
  let tbl = Hashtbl.create 4096 in
  List.iter
    (fun (o : obj) ->
      List.iter
        (fun (m : message) ->
          Hashtbl.replace tbl (o.name, m.msg_name, tag_name m.msg_tag) ()
        )
        o.messages
    )
    (Dm_api.objects_of_api server_api) ;
  (* keyed by tag too: an explicit message may share its name with a generated one that is
     not served (say a hand-written setter for a read-only field) *)
  fun obj_name (m : message) -> Hashtbl.mem tbl (obj_name, m.msg_name, tag_name m.msg_tag)

let message_json (o : obj) (m : message) =
  let forward =
    match m.msg_forward_to with
    | None ->
        Null
    | Some (Extension s) ->
        Obj [("extension", Str s)]
    | Some (HostExtension s) ->
        Obj [("hostExtension", Str s)]
  in
  let field =
    match m.msg_tag with FromField (_, f) -> Str (wire_field_name f) | _ -> Null
  in
  Obj
    [
      ("name", Str m.msg_name)
    ; ("tag", Str (tag_name m.msg_tag))
    ; ("field", field)
    ; ( "params"
      , Arr
          (List.map
             (fun p ->
               Obj
                 ([("name", Str p.param_name); ("type", Str (type_name p.param_type))]
                 @
                 match p.param_default with
                 | None ->
                     []
                 | Some v ->
                     [("default", value v)]
                 )
             )
             m.msg_params
          )
      )
    ; ( "result"
      , Str (match m.msg_result with None -> "void" | Some (t, _) -> type_name t)
      )
    ; ("roles", roles m.msg_allowed_roles)
    ; ( "mapKeysRoles"
      , Arr
          (List.map
             (fun (k, r) -> Obj [("key", Str k); ("roles", roles r)])
             m.msg_map_keys_roles
          )
      )
    ; ("session", Bool m.msg_session)
    ; ("asyncFlag", Bool m.msg_async)
    ; ("hasAsync", Bool (Gen_client.has_async m))
    ; ("hideFromDocs", Bool m.msg_hide_from_docs)
    ; ("dbOnly", Bool m.msg_db_only)
    ; ("poolInternal", Bool m.msg_pool_internal)
    ; ("secret", Bool m.msg_secret)
    ; ("hasEffect", Bool m.msg_has_effect)
    ; ("forceCustom", opt (fun q -> Str (qualifier_name q)) m.msg_force_custom)
    ; ("forwardTo", forward)
    ; ("lifecycle", Str (state_name m.msg_lifecycle))
    ; ("clientSide", Bool (Datamodel_utils.on_client_side m))
    ; ("served", Bool (served o.name m))
    ; ( "customAction"
      , Bool (Gen_empty_custom.operation_requires_side_effect m)
      )
    ]

let field_json (f : field) =
  Obj
    [
      ("name", Str (wire_field_name f))
    ; ("type", Str (type_name f.ty))
    ; ("qualifier", Str (qualifier_name f.qualifier))
    ; ("internalOnly", Bool f.internal_only)
    ; ("persist", Bool f.field_persist)
    ; ("hasEffect", Bool f.field_has_effect)
    ; ("ignoreForeignKey", Bool f.field_ignore_foreign_key)
    ; ("default", opt value f.default_value)
    ; ("lifecycle", Str (state_name f.lifecycle))
    ; ("setterRoles", roles f.field_setter_roles)
    ; ("getterRoles", roles f.field_getter_roles)
    ; ( "mapKeysRoles"
      , Arr
          (List.map
             (fun (k, r) -> Obj [("key", Str k); ("roles", roles r)])
             f.field_map_keys_roles
          )
      )
    ]

let class_json (o : obj) =
  Obj
    [
      ("name", Str o.name)
    ; ("inDatabase", Bool o.in_database)
    ; ("genEvents", Bool o.gen_events)
    ; ("genConstructorDestructor", Bool o.gen_constructor_destructor)
    ; ( "forceCustomActions"
      , opt (fun q -> Str (qualifier_name q)) o.force_custom_actions
      )
    ; ("persist", Bool (o.persist = PersistEverything))
    ; ("lifecycle", Str (state_name o.obj_lifecycle))
    ; ("fields", Arr (List.map field_json (Datamodel_utils.fields_of_obj o)))
    ; ("messages", Arr (List.map (message_json o) o.messages))
    ]

let relation_json (((a, af), (b, bf)) as rel) =
  let kind =
    Datamodel_utils.Relations.(
      string_of_classification (classify Datamodel.all_api rel)
    )
  in
  Obj
    [
      ("a", Obj [("class", Str a); ("field", Str af)])
    ; ("b", Obj [("class", Str b); ("field", Str bf)])
    ; ("kind", Str kind)
    ]

(* RBAC role uuids as gen_rbac.ml makes them: the MD5 digest of the role name read as the 16
   bytes of a uuid; pool-admin alone has a fixed uuid. *)
let hash_uuid name =
  let h = Digest.to_hex (Digest.string name) in
  String.concat "-"
    [
      String.sub h 0 8
    ; String.sub h 8 4
    ; String.sub h 12 4
    ; String.sub h 16 4
    ; String.sub h 20 12
    ]

let role_uuid name =
  if name = Datamodel_roles.role_pool_admin then
    Constants.rbac_pool_admin_uuid
  else
    hash_uuid name

let http_method = function
  | Datamodel.Get ->
      "GET"
  | Put ->
      "PUT"
  | Post ->
      "POST"
  | Connect ->
      "CONNECT"
  | Options ->
      "OPTIONS"

let http_action_json (name, (meth, uri, sdk, _args, allowed, subs)) =
  Obj
    [
      ("name", Str name)
    ; ("method", Str (http_method meth))
    ; ("uri", Str uri)
    ; ("sdk", Bool sdk)
    ; ("roles", roles allowed)
    ; ( "subActions"
      , Arr
          (List.map (fun (n, r) -> Obj [("name", Str n); ("roles", roles r)]) subs)
      )
    ]

let call_names calls =
  strs
    (List.map (fun ((o : obj), (m : message)) -> o.name ^ "." ^ m.msg_name) calls)

let () =
  let errors =
    Hashtbl.fold (fun _ e acc -> e :: acc) Datamodel_errors.errors []
    |> List.sort (fun a b -> compare a.err_name b.err_name)
  in
  let doc =
    Obj
      [
        ( "apiVersion"
        , Obj
            [
              ("major", Int Api_version.api_version_major)
            ; ("minor", Int Api_version.api_version_minor)
            ]
        )
      ; ("roles", strs Datamodel_roles.roles_all)
      ; ( "roleUuids"
        , Obj
            (List.map (fun r -> (r, Str (role_uuid r))) Datamodel_roles.roles_all)
        )
      ; ( "errors"
        , Arr
            (List.map
               (fun e -> Obj [("name", Str e.err_name); ("params", strs e.err_params)])
               errors
            )
        )
      ; ("apiErrorCodes", strs (List.rev !Api_errors.errors))
      ; ( "constants"
        , Obj
            [
              ("rbac_pool_admin_uuid", Str Constants.rbac_pool_admin_uuid)
            ; ( "http_limit_max_rpc_size"
              , Int (Int64.of_int Constants.http_limit_max_rpc_size)
              )
            ]
        )
      ; ( "classes"
        , Arr (List.map class_json (Dm_api.objects_of_api implicit_api))
        )
      ; ( "relations"
        , Arr
            (List.map relation_json (Dm_api.relations_of_api Datamodel.all_api))
        )
      ; ("noAsyncMessagesFor", strs Datamodel.no_async_messages_for)
      ; ("exposeGetAllMessagesFor", strs Datamodel.expose_get_all_messages_for)
      ; ("noTaskIdFor", strs Datamodel.no_task_id_for)
      ; ("emergencyCalls", call_names Datamodel.emergency_calls)
      ; ("whitelist", call_names Datamodel.whitelist)
      ; ( "customRateLimitHttpActions"
        , strs Datamodel.custom_rate_limit_http_actions
        )
      ; ( "publicHttpActionsWithNoRbacCheck"
        , strs Datamodel.public_http_actions_with_no_rbac_check
        )
      ; ("httpActions", Arr (List.map http_action_json Datamodel.http_actions))
      ; ( "extraPermissions"
        , Arr
            (List.map
               (fun (p, r) -> Obj [("name", Str p); ("roles", roles r)])
               Datamodel.extra_permissions
            )
        )
      ]
  in
  let b = Buffer.create (1 lsl 22) in
  write b doc ;
  print_string (Buffer.contents b) ;
  print_newline ()
