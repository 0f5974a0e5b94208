(* Stand-in for the list helpers of xapi-stdext-std used by the datamodel modules. *)
module Listext = struct
  module List = struct
    (* Remove duplicates, keeping the first occurrence of each element. *)
    let setify l =
      List.rev
        (List.fold_left (fun acc x -> if List.mem x acc then acc else x :: acc) [] l)

    let last l = match List.rev l with [] -> None | x :: _ -> Some x

    let rec between sep = function
      | ([] | [_]) as l ->
          l
      | x :: rest ->
          x :: sep :: between sep rest
  end
end
