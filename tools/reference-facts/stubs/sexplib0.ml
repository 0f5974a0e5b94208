(* Stand-in for sexplib0: just enough to print the empty backtrace default of task.backtrace. *)
module Sexp = struct
  type t = Atom of string | List of t list

  let rec to_string = function
    | Atom a ->
        a
    | List l ->
        "(" ^ String.concat " " (List.map to_string l) ^ ")"

  let to_string_hum = to_string
end
