//! Calico's selector language: `app == "web" && role in {"db", 'cache'}`,
//! `has(team) && !has(legacy)`, `all()`, `!(tier != 'front' || env not in {"prod"})`,
//! `name starts with "web-"`. Parsed once into a tree; a parse error names
//! the byte position where the selector went wrong.

use super::super::model::Labels;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `all()` (also the empty selector).
    All,
    /// `global()`: non-namespaced things (host endpoints, global sets); no pod is one.
    Global,
    Has(String),
    Equal(String, String),
    NotEqual(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// A selector that does not parse: what was wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub selector: String,
    /// Byte offset into the selector.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "selector {:?}: {} at position {}",
            self.selector, self.message, self.position
        )
    }
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut p = Parser { text, pos: 0 };
        p.skip_space();
        if p.at_end() {
            return Ok(Self::All);
        }
        let s = p.or()?;
        p.skip_space();
        if !p.at_end() {
            return Err(p.error("expected `&&`, `||` or the end of the selector"));
        }
        Ok(s)
    }

    /// Does an endpoint with these labels match? A missing label is never
    /// equal to anything: `!=` and `not in` match it.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::All => true,
            Self::Global => false,
            Self::Has(k) => labels.contains_key(k),
            Self::Equal(k, v) => labels.get(k) == Some(v),
            Self::NotEqual(k, v) => labels.get(k) != Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Contains(k, s) => labels.get(k).is_some_and(|v| v.contains(s.as_str())),
            Self::StartsWith(k, s) => labels.get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Self::EndsWith(k, s) => labels.get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Self::Not(s) => !s.matches(labels),
            Self::And(a, b) => a.matches(labels) && b.matches(labels),
            Self::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |vs: &[String]| vs.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
        match self {
            Self::All => f.write_str("all()"),
            Self::Global => f.write_str("global()"),
            Self::Has(k) => write!(f, "has({k})"),
            Self::Equal(k, v) => write!(f, "{k} == {v:?}"),
            Self::NotEqual(k, v) => write!(f, "{k} != {v:?}"),
            Self::In(k, vs) => write!(f, "{k} in {{{}}}", list(vs)),
            Self::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", list(vs)),
            Self::Contains(k, v) => write!(f, "{k} contains {v:?}"),
            Self::StartsWith(k, v) => write!(f, "{k} starts with {v:?}"),
            Self::EndsWith(k, v) => write!(f, "{k} ends with {v:?}"),
            Self::Not(s) => write!(f, "!({s})"),
            Self::And(a, b) => write!(f, "({a} && {b})"),
            Self::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> SelectorError {
        SelectorError {
            selector: self.text.to_owned(),
            position: self.pos,
            message: message.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// Consumes `token` (after spaces) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// Consumes a word operator (`in`, `not`, `contains`, …) only when a
    /// whole word: `inner` is a key, not `in` + `ner`.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        if rest.starts_with(word) && !rest[word.len()..].starts_with(is_key_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        if self.rest().starts_with("!=") {
            return Err(self.error("expected a label name before `!=`"));
        }
        if self.eat("!") {
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let inner = self.or()?;
            if !self.eat(")") {
                return Err(self.error("expected `)`"));
            }
            return Ok(inner);
        }
        for (call, selector) in [("all", Selector::All), ("global", Selector::Global)] {
            let save = self.pos;
            if self.eat_word(call) && self.eat("(") {
                if !self.eat(")") {
                    return Err(self.error(&format!("expected `)`: {call}() takes no argument")));
                }
                return Ok(selector);
            }
            self.pos = save;
        }
        let save = self.pos;
        if self.eat_word("has") && self.eat("(") {
            let key = self.key()?;
            if !self.eat(")") {
                return Err(self.error("expected `)` after the label name in has()"));
            }
            return Ok(Selector::Has(key));
        }
        self.pos = save;
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Selector, SelectorError> {
        let key = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Equal(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::NotEqual(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected `in` after `not`"));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        let save = self.pos;
        for (word, make) in [
            ("starts", Selector::StartsWith as fn(String, String) -> Selector),
            ("ends", Selector::EndsWith),
        ] {
            if self.eat_word(word) {
                if !self.eat_word("with") {
                    return Err(self.error(&format!("expected `with` after `{word}`")));
                }
                return Ok(make(key, self.string()?));
            }
        }
        self.pos = save;
        self.skip_space();
        Err(self.error(&format!(
            "expected `==`, `!=`, `in`, `not in`, `contains`, `starts with` or `ends with` after label {key:?}"
        )))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let len = self.rest().find(|c: char| !is_key_char(c)).unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error(match self.rest().chars().next() {
                None => "unexpected end of the selector: expected a label name, `has(…)`, `all()`, `!` or `(`",
                Some(_) => "expected a label name, `has(…)`, `all()`, `!` or `(`",
            }));
        }
        let key = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let Some(quote) = self.rest().chars().next().filter(|c| *c == '"' || *c == '\'') else {
            return Err(self.error("expected a quoted string"));
        };
        let start = self.pos;
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            self.pos = start;
            return Err(self.error("unterminated string"));
        };
        let value = body[..end].to_owned();
        self.pos += end + 2;
        Ok(value)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.error("expected `{` to open the set of values"));
        }
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected `,` or `}` in the set of values"));
            }
        }
    }
}

/// Label names as Kubernetes allows them, with a DNS prefix: `app`,
/// `projectcalico.org/namespace`, `app.kubernetes.io/name`.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_operator_parses_and_matches_as_calico_documents() {
        let pod = labels(&[
            ("app", "web"),
            ("tier", "frontend"),
            ("env", "prod"),
            ("app.kubernetes.io/name", "shop"),
        ]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("all()", true),
            ("global()", false),
            ("app == 'web'", true),
            ("app == \"db\"", false),
            ("app != 'db'", true),
            ("missing != 'x'", true),
            ("app in {'web', \"api\"}", true),
            ("app in {}", false),
            ("app not in {'db'}", true),
            ("missing not in {'x'}", true),
            ("missing in {'x'}", false),
            ("has(tier)", true),
            ("!has(tier)", false),
            ("has(missing)", false),
            ("app.kubernetes.io/name == 'shop'", true),
            ("tier contains 'end'", true),
            ("tier starts with 'front'", true),
            ("tier ends with 'end'", true),
            ("tier ends with 'front'", false),
            ("app == 'web' && env == 'prod'", true),
            ("app == 'web' && env == 'dev'", false),
            ("app == 'db' || env == 'prod'", true),
            ("!(app == 'db')", true),
            ("! app == 'web'", false),
            ("(app == 'db' || app == 'web') && !has(legacy)", true),
            ("app == 'db' || app == 'web' && env == 'dev'", false), // && binds tighter
            ("(app == 'db' || app == 'web') && env == 'dev'", false),
            ("  has( tier )  &&  all()  ", true),
            ("inner == 'x'", false), // `inner` is a label, not `in`
        ];
        for (text, want) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.matches(&pod), *want, "{text:?} parsed as {s}");
            // the printed form parses back to the same tree
            assert_eq!(Selector::parse(&s.to_string()).as_ref(), Ok(&s), "{text:?} → {s}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_position() {
        let cases: &[(&str, usize, &str)] = &[
            ("app ==", 6, "expected a quoted string"),
            ("app == web", 7, "expected a quoted string"),
            ("app == 'web", 7, "unterminated string"),
            ("app = 'web'", 4, "expected `==`"),
            ("has(app", 7, "expected `)`"),
            ("app in ('a')", 7, "expected `{`"),
            ("app in {'a' 'b'}", 12, "expected `,` or `}`"),
            ("app not 'a'", 8, "expected `in` after `not`"),
            ("(app == 'a'", 11, "expected `)`"),
            ("app == 'a' &&", 13, "unexpected end"),
            ("app == 'a' extra", 11, "expected `&&`, `||` or the end"),
            ("&& app == 'a'", 0, "expected a label name"),
            ("all(x)", 4, "all() takes no argument"),
            ("tier starts 'x'", 12, "expected `with`"),
            ("!= 'x'", 0, "expected a label name before `!=`"),
        ];
        for (text, position, message) in cases {
            let e = Selector::parse(text).expect_err(text);
            assert_eq!(e.position, *position, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
            assert!(e.to_string().contains(&format!("at position {position}")), "{e}");
        }
    }
}
