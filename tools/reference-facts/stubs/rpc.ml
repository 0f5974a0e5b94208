(* Stand-in for rpclib's Rpc: the value type and the few helpers the datamodel modules use. *)
type t =
  | Int of int64
  | Int32 of int32
  | Bool of bool
  | Float of float
  | String of string
  | DateTime of string
  | Enum of t list
  | Dict of (string * t) list
  | Base64 of string
  | Null

let rpc_of_string s = String s

let string_of_rpc = function
  | String s ->
      s
  | _ ->
      failwith "Rpc.string_of_rpc: not a string"

let rec to_string = function
  | Int i ->
      Int64.to_string i
  | Int32 i ->
      Int32.to_string i
  | Bool b ->
      string_of_bool b
  | Float f ->
      Printf.sprintf "%g" f
  | String s | DateTime s | Base64 s ->
      Printf.sprintf "%S" s
  | Enum l ->
      "[" ^ String.concat "; " (List.map to_string l) ^ "]"
  | Dict d ->
      "{"
      ^ String.concat "; " (List.map (fun (k, v) -> k ^ ": " ^ to_string v) d)
      ^ "}"
  | Null ->
      "N"
