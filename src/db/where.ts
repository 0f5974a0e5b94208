// The expression language of get_all_records_where / get_all_where, as xapi parses it
// (ocaml/database/db_filter_lex.mll, db_filter_parse.mly, db_filter.ml). Clients send these
// strings verbatim, so the quirks are kept on purpose:
//  - keywords are matched as plain prefixes with no word boundary ("trueandfalse" is
//    `true and false`, "notfalse" is `not false`), lower case only;
//  - whitespace is space, tab and newline only (a CR is a lexing error);
//  - string literals are `"` ... `"` with no escapes (they may span lines);
//  - `and` and `or` share one precedence level and associate to the left; `not` has the
//    LOWEST precedence (declared first in the .mly), so `not A and B` is `not (A and B)` and
//    `A and not B or C` is `A and not (B or C)`.
// Parse failures carry the text xapi puts in INVALID_VALUE [expr; msg], which is
// Printexc.to_string of the lexer's or the (menhir) parser's exception.

export type WhereValue = { kind: 'field'; name: string } | { kind: 'literal'; value: string };

export type WhereExpr =
  | { op: 'true' }
  | { op: 'false' }
  | { op: 'not'; e: WhereExpr }
  | { op: 'eq'; a: WhereValue; b: WhereValue }
  | { op: 'and'; a: WhereExpr; b: WhereExpr }
  | { op: 'or'; a: WhereExpr; b: WhereExpr };

/** Printexc.to_string of ocamllex's exception when no token matches. */
export const LEX_ERROR = 'Failure("lexing: empty token")';
/** Printexc.to_string of menhir's Error in module Db_filter_parse of the wrapped xapi_database library. */
export const PARSE_ERROR = 'Xapi_database__Db_filter_parse.MenhirBasics.Error';

export class WhereParseError extends Error {
  constructor(message: typeof LEX_ERROR | typeof PARSE_ERROR) {
    super(message);
    this.name = 'WhereParseError';
  }
}

type Token = { t: 'eq' | 'true' | 'false' | 'lparen' | 'rparen' | 'field' | 'and' | 'or' | 'not' | 'eof' } | { t: 'ident'; s: string };

// Order does not matter: at most one keyword can match at a position (they differ in their
// first letters or, for "false"/"field", in the second).
const KEYWORDS = ['true', 'false', 'field', 'and', 'or', 'not'] as const;

/** Tokens are produced on demand, one ahead at most, so that a lexing error is reported only
 * if the parser gets that far, exactly as with ocamllex driven by menhir. */
class Lexer {
  private pos = 0;
  constructor(private readonly text: string) {}

  next(): Token {
    const s = this.text;
    while (s[this.pos] === ' ' || s[this.pos] === '\t' || s[this.pos] === '\n') this.pos++;
    if (this.pos >= s.length) return { t: 'eof' };
    const c = s[this.pos];
    if (c === '=' || c === '(' || c === ')') {
      this.pos++;
      return { t: c === '=' ? 'eq' : c === '(' ? 'lparen' : 'rparen' };
    }
    if (c === '"') {
      const end = s.indexOf('"', this.pos + 1);
      if (end < 0) throw new WhereParseError(LEX_ERROR);
      const ident = s.slice(this.pos + 1, end);
      this.pos = end + 1;
      return { t: 'ident', s: ident };
    }
    for (const k of KEYWORDS) {
      if (s.startsWith(k, this.pos)) {
        this.pos += k.length;
        return { t: k };
      }
    }
    throw new WhereParseError(LEX_ERROR);
  }
}

/** Parses an expression; throws WhereParseError (message = xapi's exception text). */
export function parseWhere(text: string): WhereExpr {
  const lexer = new Lexer(text);
  let tok = lexer.next();
  // A function rather than the variable itself, so TypeScript does not narrow across advance().
  const peek = (): Token => tok;
  const advance = () => {
    tok = lexer.next();
  };
  const fail = (): never => {
    throw new WhereParseError(PARSE_ERROR);
  };

  const value = (): WhereValue => {
    const first = peek();
    if (first.t === 'ident') {
      const v: WhereValue = { kind: 'literal', value: first.s };
      advance();
      return v;
    }
    if (first.t !== 'field') return fail();
    advance();
    const name = peek();
    if (name.t !== 'ident') return fail();
    const v: WhereValue = { kind: 'field', name: name.s };
    advance();
    return v;
  };

  // An operand of and/or: everything except a leading `not`, which is handled by expr()
  // because it swallows the rest of the (parenthesised) expression.
  const primary = (): WhereExpr => {
    const t = peek().t;
    switch (t) {
      case 'true':
      case 'false': {
        const e: WhereExpr = { op: t };
        advance();
        return e;
      }
      case 'lparen': {
        advance();
        const e = expr();
        if (peek().t !== 'rparen') fail();
        advance();
        return e;
      }
      case 'ident':
      case 'field': {
        const a = value();
        if (peek().t !== 'eq') fail();
        advance();
        return { op: 'eq', a, b: value() };
      }
      default:
        return fail();
    }
  };

  const expr = (): WhereExpr => {
    if (peek().t === 'not') {
      advance();
      return { op: 'not', e: expr() };
    }
    let left = primary();
    while (peek().t === 'and' || peek().t === 'or') {
      const op = peek().t as 'and' | 'or';
      advance();
      // `A and not B or C`: the not takes everything to its right, ending the chain.
      const right = peek().t === 'not' ? expr() : primary();
      left = { op, a: left, b: right };
    }
    return left;
  };

  const e = expr();
  if (peek().t !== 'eof') fail();
  return e;
}

/**
 * Evaluates an expression against one row. `column` returns the DB string form of a column
 * (and throws for an unknown one). Comparison is plain string equality; `and`/`or` short-circuit
 * as in db_filter.ml, so an unknown column behind a false `and` is never looked up.
 */
export function evalWhere(e: WhereExpr, column: (name: string) => string): boolean {
  const val = (v: WhereValue) => (v.kind === 'field' ? column(v.name) : v.value);
  switch (e.op) {
    case 'true':
      return true;
    case 'false':
      return false;
    case 'not':
      return !evalWhere(e.e, column);
    case 'and':
      return evalWhere(e.a, column) && evalWhere(e.b, column);
    case 'or':
      return evalWhere(e.a, column) || evalWhere(e.b, column);
    case 'eq': {
      // OCaml evaluates the two lookups right to left; keep that order so the same unknown
      // column is the one reported when both sides are bad.
      const b = val(e.b);
      return val(e.a) === b;
    }
  }
}
