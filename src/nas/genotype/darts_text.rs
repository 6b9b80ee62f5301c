//! The official Python text form of a genotype (`cnn/genotypes.py`): printing, and a parser
//! whose errors name the line and column.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use super::{Gene, Genotype};
use crate::nas::error::NasError;
use crate::nas::ops::OpKind;

impl Genotype {
    /// The official text form, e.g. `Genotype(normal=[('sep_conv_3x3', 0), ...],
    /// normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])`. Cells whose
    /// nodes do not all have two genes are printed grouped per node (`[[(..), ..], ..]`, the
    /// pt.darts form), which [`Genotype::from_str`] reads back.
    pub fn to_darts_string(&self) -> String {
        fn genes(out: &mut String, nodes: &[Vec<Gene>]) {
            let pair = |(op, i): &Gene| format!("('{}', {i})", op.name());
            let flat = nodes.iter().all(|g| g.len() == 2);
            if flat {
                let pairs: Vec<String> = nodes.iter().flatten().map(pair).collect();
                let _ = write!(out, "[{}]", pairs.join(", "));
            } else {
                let groups: Vec<String> = nodes
                    .iter()
                    .map(|g| format!("[{}]", g.iter().map(pair).collect::<Vec<_>>().join(", ")))
                    .collect();
                let _ = write!(out, "[{}]", groups.join(", "));
            }
        }
        let list = |v: &[usize]| {
            format!(
                "[{}]",
                v.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut out = String::from("Genotype(normal=");
        genes(&mut out, &self.normal);
        let _ = write!(
            out,
            ", normal_concat={}, reduce=",
            list(&self.normal_concat)
        );
        genes(&mut out, &self.reduce);
        let _ = write!(out, ", reduce_concat={})", list(&self.reduce_concat));
        out
    }
}

impl fmt::Display for Genotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_darts_string())
    }
}

impl FromStr for Genotype {
    type Err = NasError;

    /// Parses the official text form (flat pairs or grouped per node; concat as a list, a tuple
    /// or `range(a, b)`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Parser::new(text)?.genotype()
    }
}

// ---------------------------------------------------------------------------------------------
// Text form parser

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(usize),
    Punct(char),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::End => f.write_str("end of input"),
        }
    }
}

/// Tokens with their 1-based (line, column).
struct Parser {
    toks: Vec<(Tok, usize, usize)>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, NasError> {
        let mut toks = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        let (mut i, mut line, mut col) = (0, 1, 1);
        let err = |line, column, message: String| NasError::GenotypeParse {
            line,
            column,
            message,
        };
        while i < chars.len() {
            let c = chars[i];
            let (start_line, start_col) = (line, col);
            if c == '\n' {
                i += 1;
                line += 1;
                col = 1;
                continue;
            }
            if c.is_whitespace() {
                i += 1;
                col += 1;
                continue;
            }
            if c == '\'' || c == '"' {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c && chars[j] != '\n' {
                    j += 1;
                }
                if j >= chars.len() || chars[j] != c {
                    return Err(err(start_line, start_col, "unterminated string".into()));
                }
                toks.push((
                    Tok::Str(chars[i + 1..j].iter().collect()),
                    start_line,
                    start_col,
                ));
                col += j + 1 - i;
                i = j + 1;
            } else if c.is_ascii_digit() {
                let mut j = i;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                let digits: String = chars[i..j].iter().collect();
                let value = digits.parse().map_err(|_| {
                    err(
                        start_line,
                        start_col,
                        format!("integer {digits} is too large"),
                    )
                })?;
                toks.push((Tok::Int(value), start_line, start_col));
                col += j - i;
                i = j;
            } else if c.is_alphabetic() || c == '_' {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.')
                {
                    j += 1;
                }
                toks.push((
                    Tok::Ident(chars[i..j].iter().collect()),
                    start_line,
                    start_col,
                ));
                col += j - i;
                i = j;
            } else if "()[],=".contains(c) {
                toks.push((Tok::Punct(c), start_line, start_col));
                i += 1;
                col += 1;
            } else {
                return Err(err(
                    start_line,
                    start_col,
                    format!("unexpected character `{c}`"),
                ));
            }
        }
        toks.push((Tok::End, line, col));
        Ok(Self { toks, pos: 0 })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn error<T>(&self, message: String) -> Result<T, NasError> {
        let (_, line, column) = self.toks[self.pos];
        Err(NasError::GenotypeParse {
            line,
            column,
            message,
        })
    }

    fn next(&mut self) -> Tok {
        let tok = self.toks[self.pos].0.clone();
        if tok != Tok::End {
            self.pos += 1;
        }
        tok
    }

    fn expect(&mut self, c: char) -> Result<(), NasError> {
        match self.peek() {
            Tok::Punct(p) if *p == c => {
                self.pos += 1;
                Ok(())
            }
            other => self.error(format!("expected `{c}`, found {other}")),
        }
    }

    /// Consumes `c` if it is next.
    fn eat(&mut self, c: char) -> bool {
        if *self.peek() == Tok::Punct(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Result<usize, NasError> {
        match self.peek() {
            Tok::Int(v) => {
                let v = *v;
                self.pos += 1;
                Ok(v)
            }
            other => self.error(format!("expected an integer, found {other}")),
        }
    }

    fn genotype(mut self) -> Result<Genotype, NasError> {
        // Accept `Genotype(...)` and module-qualified names (`genotypes.Genotype(...)`).
        match self.peek() {
            Tok::Ident(name) if name == "Genotype" || name.ends_with(".Genotype") => {
                self.pos += 1;
            }
            other => return self.error(format!("expected `Genotype(`, found {other}")),
        }
        self.expect('(')?;
        let (mut normal, mut normal_concat, mut reduce, mut reduce_concat) =
            (None, None, None, None);
        while !self.eat(')') {
            let field = match self.next() {
                Tok::Ident(field) => field,
                other => {
                    self.pos -= usize::from(other != Tok::End);
                    return self.error(format!("expected a field name (normal, normal_concat, reduce, reduce_concat), found {other}"));
                }
            };
            let field_pos = self.pos - 1;
            self.expect('=')?;
            let duplicate = match field.as_str() {
                "normal" => normal.replace(self.genes()?).is_some(),
                "reduce" => reduce.replace(self.genes()?).is_some(),
                "normal_concat" => normal_concat.replace(self.concat()?).is_some(),
                "reduce_concat" => reduce_concat.replace(self.concat()?).is_some(),
                _ => {
                    self.pos = field_pos;
                    return self.error(format!(
                        "unknown field `{field}`; a Genotype has normal, normal_concat, reduce, reduce_concat"
                    ));
                }
            };
            if duplicate {
                self.pos = field_pos;
                return self.error(format!("field `{field}` given twice"));
            }
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        if *self.peek() != Tok::End {
            return self.error(format!("unexpected {} after the closing `)`", self.peek()));
        }
        let missing = |name: &str| NasError::GenotypeParse {
            line: 1,
            column: 1,
            message: format!("missing field `{name}`"),
        };
        Ok(Genotype {
            normal: normal.ok_or_else(|| missing("normal"))?,
            normal_concat: normal_concat.ok_or_else(|| missing("normal_concat"))?,
            reduce: reduce.ok_or_else(|| missing("reduce"))?,
            reduce_concat: reduce_concat.ok_or_else(|| missing("reduce_concat"))?,
        })
    }

    /// `[('op', i), ...]` (two per node) or `[[('op', i), ...], ...]` (grouped per node).
    fn genes(&mut self) -> Result<Vec<Vec<Gene>>, NasError> {
        let list_start = self.pos;
        self.expect('[')?;
        if *self.peek() == Tok::Punct('[') {
            let mut nodes = Vec::new();
            while !self.eat(']') {
                self.expect('[')?;
                let mut genes = Vec::new();
                while !self.eat(']') {
                    genes.push(self.pair()?);
                    if !self.eat(',') {
                        self.expect(']')?;
                        break;
                    }
                }
                nodes.push(genes);
                if !self.eat(',') {
                    self.expect(']')?;
                    break;
                }
            }
            return Ok(nodes);
        }
        let mut pairs = Vec::new();
        while !self.eat(']') {
            pairs.push(self.pair()?);
            if !self.eat(',') {
                self.expect(']')?;
                break;
            }
        }
        if pairs.len() % 2 != 0 {
            self.pos = list_start;
            return self.error(format!(
                "the flat DARTS form lists two (op, input) pairs per node, found {} pairs; group them per node as [[...], ...] for other counts",
                pairs.len()
            ));
        }
        Ok(pairs.chunks(2).map(<[Gene]>::to_vec).collect())
    }

    /// `('op', i)`.
    fn pair(&mut self) -> Result<Gene, NasError> {
        self.expect('(')?;
        let op = match self.peek().clone() {
            Tok::Str(name) => match name.parse::<OpKind>() {
                Ok(op) => op,
                Err(e) => return self.error(e.to_string()),
            },
            other => return self.error(format!("expected a quoted op name, found {other}")),
        };
        self.pos += 1;
        self.expect(',')?;
        let input = self.int()?;
        self.eat(',');
        self.expect(')')?;
        Ok((op, input))
    }

    /// `[2, 3, 4, 5]`, `(2, 3)`, `range(2, 6)` or `range(6)`.
    fn concat(&mut self) -> Result<Vec<usize>, NasError> {
        match self.peek().clone() {
            Tok::Ident(name) if name == "range" => {
                self.pos += 1;
                self.expect('(')?;
                let first = self.int()?;
                let (start, end) = if self.eat(',') {
                    (first, self.int()?)
                } else {
                    (0, first)
                };
                self.eat(',');
                self.expect(')')?;
                Ok((start..end).collect())
            }
            Tok::Punct(open @ ('[' | '(')) => {
                let close = if open == '[' { ']' } else { ')' };
                self.pos += 1;
                let mut values = Vec::new();
                while !self.eat(close) {
                    values.push(self.int()?);
                    if !self.eat(',') {
                        self.expect(close)?;
                        break;
                    }
                }
                Ok(values)
            }
            other => self.error(format!(
                "expected a concat list `[2, 3, 4, 5]` or `range(2, 6)`, found {other}"
            )),
        }
    }
}
