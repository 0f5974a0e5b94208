(* A stand-in for ppx_deriving_rpc, enough to compile the reference datamodel without rpclib.

   For every type declaration carrying [@@deriving rpc] it appends the two converters that the
   real deriver would define (rpc_of_<t> and <t>_of_rpc):
   - for a variant whose constructors all have no arguments, working converters that map a
     constructor to Rpc.String "<Constructor>" and back (what the real deriver does for such
     constructors);
   - for anything else, converters that fail loudly when called. The facts extraction never
     calls them; they exist only so that the modules type-check against their interfaces.

   Built with the compiler's own libraries (compiler-libs), run by the compiler as -ppx. *)

open Parsetree

let has_deriving_rpc (attrs : attributes) =
  List.exists
    (fun a ->
      a.attr_name.txt = "deriving"
      &&
      match a.attr_payload with
      | PStr [{pstr_desc= Pstr_eval (e, _); _}] ->
          let rec mentions_rpc e =
            match e.pexp_desc with
            | Pexp_ident {txt= Longident.Lident "rpc"; _} ->
                true
            | Pexp_tuple es ->
                List.exists mentions_rpc es
            | Pexp_apply (f, args) ->
                mentions_rpc f || List.exists (fun (_, e) -> mentions_rpc e) args
            | _ ->
                false
          in
          mentions_rpc e
      | _ ->
          false
    )
    attrs

let to_rpc_name name = if name = "t" then "rpc_of_t" else "rpc_of_" ^ name

let of_rpc_name name = if name = "t" then "t_of_rpc" else name ^ "_of_rpc"

(* Source text of the converters for one type declaration. *)
let converters_of (decl : type_declaration) =
  let name = decl.ptype_name.txt in
  let constant_constructors =
    match decl.ptype_kind with
    | Ptype_variant cs
      when decl.ptype_params = []
           && List.for_all
                (fun c -> c.pcd_args = Pcstr_tuple [] && c.pcd_res = None)
                cs ->
        Some (List.map (fun c -> c.pcd_name.txt) cs)
    | _ ->
        None
  in
  match constant_constructors with
  | Some names ->
      let to_cases =
        List.map (fun c -> Printf.sprintf "| %s -> Rpc.String %S" c c) names
      in
      let of_cases =
        List.map (fun c -> Printf.sprintf "| Rpc.String %S -> %s" c c) names
      in
      Printf.sprintf
        "let %s : %s -> Rpc.t = function %s\n\
         let %s : Rpc.t -> %s = function %s | _ -> failwith %S"
        (to_rpc_name name) name
        (String.concat " " to_cases)
        (of_rpc_name name) name
        (String.concat " " of_cases)
        (of_rpc_name name ^ ": unexpected value")
  | None ->
      let annotate = decl.ptype_params = [] in
      Printf.sprintf
        "let %s %s = failwith %S\nlet %s %s = failwith %S"
        (to_rpc_name name)
        (if annotate then "(_ : " ^ name ^ ") : Rpc.t" else "_")
        (to_rpc_name name ^ " is not derived by the facts tool")
        (of_rpc_name name)
        (if annotate then "(_ : Rpc.t) : " ^ name else "_")
        (of_rpc_name name ^ " is not derived by the facts tool")

let parse_items text = Parse.implementation (Lexing.from_string text)

let rec expand_structure items =
  List.concat_map
    (fun item ->
      match item.pstr_desc with
      | Pstr_type (_, decls)
        when List.exists (fun d -> has_deriving_rpc d.ptype_attributes) decls ->
          item :: parse_items (String.concat "\n" (List.map converters_of decls))
      | Pstr_module mb ->
          [{item with pstr_desc= Pstr_module {mb with pmb_expr= expand_module mb.pmb_expr}}]
      | _ ->
          [item]
    )
    items

and expand_module me =
  match me.pmod_desc with
  | Pmod_structure items ->
      {me with pmod_desc= Pmod_structure (expand_structure items)}
  | Pmod_constraint (m, ty) ->
      {me with pmod_desc= Pmod_constraint (expand_module m, ty)}
  | _ ->
      me

let () =
  Ast_mapper.run_main (fun _argv ->
      {Ast_mapper.default_mapper with structure= (fun _ items -> expand_structure items)}
  )
