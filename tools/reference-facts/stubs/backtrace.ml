(* Stand-in for xapi-backtrace: an empty backtrace prints as the empty s-expression "()". *)
type t = unit

let empty = ()

let sexp_of_t () = Sexplib0.Sexp.List []
