(* Stand-in for the two Astring functions the OCaml code generator's helpers use. *)
module Char = struct
  module Ascii = struct
    let is_digit c = c >= '0' && c <= '9'
  end
end

module String = struct
  let filter p s =
    let b = Buffer.create (Stdlib.String.length s) in
    Stdlib.String.iter (fun c -> if p c then Buffer.add_char b c) s ;
    Buffer.contents b
end
