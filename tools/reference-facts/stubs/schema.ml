(* Stand-in for xapi-schema's Schema.Value: datamodel_values.ml builds database values with it.
   The facts extraction does not use database values; this only lets the module compile. *)
module Value = struct
  type t = String of string | Set of string list | Pairs of (string * string) list

  let string s = String s
end
