(* Stand-in for xapi's Clock library. The datamodel only ever uses the epoch as a default and
   prints it, so a date is kept as its printed form (xapi's legacy ISO 8601 basic format). *)
module Date = struct
  type t = string

  let epoch = "19700101T00:00:00Z"

  let of_iso8601 s = s

  let to_rfc3339 d = d
end
