//! Authorisation rules in oslo.policy's language: the defaults every
//! deployment gets, an operator's YAML file overriding some of them
//! (`[oslo_policy] policy_file`), and the evaluator the handlers call.
//!
//! The language is oslo.policy's: `@` (always), `!` (never), `rule:NAME`,
//! `role:NAME`, generic checks `ATTRIBUTE:%(target_key)s` or
//! `ATTRIBUTE:'literal'`, combined with `and`, `or`, `not` and parentheses.
//! Anything unknown denies: a rule name nobody defined, a target key the
//! request does not carry, a credential the caller lacks.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// One default rule, documented in the sample.
pub struct RuleDoc {
    pub name: &'static str,
    pub check: &'static str,
    pub description: &'static str,
    /// The API operations it guards; empty for helper rules.
    pub operations: &'static str,
}

/// Every default, in sample order. Modelled on Neutron's secure RBAC
/// defaults: project readers may look, project members may change, and
/// `admin` may do anything in any project.
pub const DEFAULTS: &[RuleDoc] = &[
    RuleDoc {
        name: "context_is_admin",
        check: "role:admin",
        description: "Who counts as a cloud administrator (acts across projects).",
        operations: "",
    },
    RuleDoc {
        name: "admin_only",
        check: "rule:context_is_admin",
        description: "Administrators only.",
        operations: "",
    },
    RuleDoc {
        name: "project_member",
        check: "role:member and project_id:%(project_id)s",
        description: "A member of the project that owns the resource.",
        operations: "",
    },
    RuleDoc {
        name: "project_reader",
        check: "role:reader and project_id:%(project_id)s",
        description: "A reader of the project that owns the resource.",
        operations: "",
    },
    RuleDoc {
        name: "admin_or_project_member",
        check: "rule:context_is_admin or rule:project_member",
        description: "An administrator, or a member of the owning project.",
        operations: "",
    },
    RuleDoc {
        name: "admin_or_project_reader",
        check: "rule:context_is_admin or rule:project_member or rule:project_reader",
        description: "An administrator, or a reader of the owning project. Members count as readers: a token from an application credential lists only the roles it was given, without the ones they imply.",
        operations: "",
    },
    RuleDoc {
        name: "get_forward",
        check: "rule:admin_or_project_reader",
        description: "Show a forward, or list a project's forwards. A forward the caller may not see is answered 404, as if it did not exist.",
        operations: "GET /v1/forwards, GET /v1/forwards/{id}",
    },
    RuleDoc {
        name: "list_all_projects",
        check: "rule:admin_only",
        description: "List the forwards of every project (all_projects=true).",
        operations: "GET /v1/forwards?all_projects=true",
    },
    RuleDoc {
        name: "create_forward",
        check: "rule:admin_or_project_member",
        description: "Create a forward in the token's project.",
        operations: "POST /v1/forwards",
    },
    RuleDoc {
        name: "create_forward:proxy",
        check: "rule:admin_only",
        description: "Choose the proxy a new forward is placed on.",
        operations: "POST /v1/forwards",
    },
    RuleDoc {
        name: "update_forward",
        check: "rule:admin_or_project_member",
        description: "Change a forward's target or description.",
        operations: "PUT /v1/forwards/{id}",
    },
    RuleDoc {
        name: "delete_forward",
        check: "rule:admin_or_project_member",
        description: "Delete a forward.",
        operations: "DELETE /v1/forwards/{id}",
    },
    RuleDoc {
        name: "quota:get",
        check: "rule:admin_or_project_reader",
        description: "Show a project's quota (limits, and use with /details). Another project's is 403.",
        operations: "GET /v1/quotas/{project_id}, GET /v1/quotas/{project_id}/details",
    },
    RuleDoc {
        name: "quota:update",
        check: "rule:admin_only",
        description: "Set a project's quota.",
        operations: "PUT /v1/quotas/{project_id}",
    },
    RuleDoc {
        name: "quota:delete",
        check: "rule:admin_only",
        description: "Return a project to the [quotas] defaults.",
        operations: "DELETE /v1/quotas/{project_id}",
    },
    RuleDoc {
        name: "get_proxy",
        check: "rule:admin_only",
        description: "List or show proxies (forwarding nodes).",
        operations: "GET /v1/proxies, GET /v1/proxies/{host}",
    },
];

/// What the caller is, as oslo.policy's credentials.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `user_id`, `project_id`, ... as generic checks see them.
    pub attributes: HashMap<String, String>,
    /// Lower-case role names (implied roles included, as Keystone lists them).
    pub roles: Vec<String>,
}

impl Credentials {
    pub fn new(attributes: &[(&str, &str)], roles: &[String]) -> Credentials {
        Credentials {
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            roles: roles.iter().map(|r| r.to_lowercase()).collect(),
        }
    }
}

/// A policy file or rule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a YAML (or JSON) mapping of rule names to strings: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: rule {rule:?}: {message}")]
    Rule {
        path: String,
        rule: String,
        message: String,
    },
}

/// A parsed check.
#[derive(Clone, Debug, PartialEq)]
enum Check {
    Always,
    Never,
    Rule(String),
    Role(Value),
    /// `ATTRIBUTE:VALUE`: the caller's attribute (or a literal) equals VALUE.
    Generic {
        left: Value,
        right: Value,
    },
    Not(Box<Check>),
    And(Vec<Check>),
    Or(Vec<Check>),
}

/// One side of a check.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    /// `%(key)s`: taken from the target.
    Target(String),
    /// `'text'` or a bare word on the right: itself.
    Literal(String),
    /// A bare word on the left: the caller's attribute of that name.
    Credential(String),
}

/// The rules in force.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: HashMap<String, Check>,
    texts: BTreeMap<String, String>,
}

/// How deep `rule:` references may nest before the evaluator gives up (and
/// denies); loops are refused at load time, so this is only a backstop.
const MAX_DEPTH: usize = 32;

impl Default for Policy {
    fn default() -> Policy {
        Policy::defaults()
    }
}

impl Policy {
    /// The built-in rules only.
    pub fn defaults() -> Policy {
        let mut policy = Policy {
            rules: HashMap::new(),
            texts: BTreeMap::new(),
        };
        for doc in DEFAULTS {
            // The defaults are tested to parse; a failure is a build bug,
            // and denying is the safe reading of it.
            let check = parse(doc.check).unwrap_or(Check::Never);
            policy.rules.insert(doc.name.to_owned(), check);
            policy
                .texts
                .insert(doc.name.to_owned(), doc.check.to_owned());
        }
        policy
    }

    /// The defaults overridden by the file at `path`, if any.
    pub fn load(path: Option<&Path>) -> Result<Policy, PolicyError> {
        let Some(path) = path else {
            return Ok(Policy::defaults());
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: name.clone(),
            source,
        })?;
        Policy::from_yaml(&name, &text)
    }

    /// The defaults overridden by the YAML text of a file named `path`.
    pub fn from_yaml(path: &str, text: &str) -> Result<Policy, PolicyError> {
        let syntax = |message: String| PolicyError::Syntax {
            path: path.to_owned(),
            message,
        };
        // An empty file (or one of comments only, like the sample) is no override.
        let overrides: BTreeMap<String, yaml_serde::Value> = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            BTreeMap::new()
        } else {
            yaml_serde::from_str(text).map_err(|e| syntax(e.to_string()))?
        };
        let mut policy = Policy::defaults();
        for (rule, value) in overrides {
            let text = match value {
                yaml_serde::Value::String(s) => s,
                yaml_serde::Value::Null => String::new(),
                _ => {
                    return Err(PolicyError::Rule {
                        path: path.to_owned(),
                        rule,
                        message: "expected a string such as \"role:admin\"".into(),
                    });
                }
            };
            let check = parse(&text).map_err(|message| PolicyError::Rule {
                path: path.to_owned(),
                rule: rule.clone(),
                message,
            })?;
            if !DEFAULTS.iter().any(|d| d.name == rule) {
                tracing::debug!(%rule, "policy file defines a rule that is not a default");
            }
            policy.rules.insert(rule.clone(), check);
            policy.texts.insert(rule, text);
        }
        policy.check_loops(path)?;
        Ok(policy)
    }

    /// Refuses a rule that refers to itself through `rule:` chains.
    fn check_loops(&self, path: &str) -> Result<(), PolicyError> {
        fn refs(check: &Check, out: &mut Vec<String>) {
            match check {
                Check::Rule(name) => out.push(name.clone()),
                Check::Not(inner) => refs(inner, out),
                Check::And(items) | Check::Or(items) => {
                    items.iter().for_each(|c| refs(c, out));
                }
                _ => {}
            }
        }
        fn visit(
            policy: &Policy,
            name: &str,
            stack: &mut Vec<String>,
            done: &mut Vec<String>,
        ) -> Result<(), String> {
            if done.iter().any(|d| d == name) {
                return Ok(());
            }
            if stack.iter().any(|s| s == name) {
                stack.push(name.to_owned());
                return Err(stack.join(" -> "));
            }
            let Some(check) = policy.rules.get(name) else {
                return Ok(());
            };
            stack.push(name.to_owned());
            let mut next = Vec::new();
            refs(check, &mut next);
            for n in next {
                visit(policy, &n, stack, done)?;
            }
            stack.pop();
            done.push(name.to_owned());
            Ok(())
        }
        let mut done = Vec::new();
        for name in self.texts.keys() {
            visit(self, name, &mut Vec::new(), &mut done).map_err(|cycle| PolicyError::Rule {
                path: path.to_owned(),
                rule: name.clone(),
                message: format!("rules refer to each other in a loop: {cycle}"),
            })?;
        }
        Ok(())
    }

    /// Whether `creds` may do `rule` on `target` (`key -> value`, e.g.
    /// `project_id` of the forward). An undefined rule denies.
    pub fn check(&self, rule: &str, creds: &Credentials, target: &[(&str, &str)]) -> bool {
        match self.rules.get(rule) {
            Some(check) => self.eval(check, creds, target, 0),
            None => false,
        }
    }

    /// The text of a rule as configured (for logs and tests).
    pub fn rule_text(&self, rule: &str) -> Option<&str> {
        self.texts.get(rule).map(String::as_str)
    }

    fn eval(
        &self,
        check: &Check,
        creds: &Credentials,
        target: &[(&str, &str)],
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        // Borrowed, not copied: every API request evaluates a few rules.
        fn resolve<'a>(
            value: &'a Value,
            creds: &'a Credentials,
            target: &[(&'a str, &'a str)],
        ) -> Option<&'a str> {
            match value {
                Value::Literal(text) => Some(text),
                Value::Target(key) => target.iter().find(|(k, _)| k == key).map(|(_, v)| *v),
                Value::Credential(key) => creds.attributes.get(key).map(String::as_str),
            }
        }
        match check {
            Check::Always => true,
            Check::Never => false,
            Check::Rule(name) => match self.rules.get(name) {
                Some(inner) => self.eval(inner, creds, target, depth + 1),
                None => false,
            },
            Check::Role(role) => resolve(role, creds, target)
                .is_some_and(|r| creds.roles.iter().any(|have| have.eq_ignore_ascii_case(r))),
            Check::Generic { left, right } => {
                match (resolve(left, creds, target), resolve(right, creds, target)) {
                    (Some(l), Some(r)) => l == r,
                    // A missing attribute or target key never matches, so an
                    // empty project id cannot equal another empty one.
                    _ => false,
                }
            }
            Check::Not(inner) => !self.eval(inner, creds, target, depth + 1),
            Check::And(items) => items.iter().all(|c| self.eval(c, creds, target, depth + 1)),
            Check::Or(items) => items.iter().any(|c| self.eval(c, creds, target, depth + 1)),
        }
    }
}

/// The text of `policy.yaml.sample`: every default, commented out, with
/// what it guards (the layout of oslopolicy-sample-generator).
pub fn sample() -> String {
    let mut out = String::from(
        "# policy.yaml.sample: every authorisation rule of navigator-server with its default.\n\
         # Generated by `navigator-server policy sample`; do not edit by hand.\n\
         # Copy the rules to change into the file named by [oslo_policy] policy_file\n\
         # and uncomment them; rules left out keep their defaults.\n",
    );
    for doc in DEFAULTS {
        let _ = writeln!(out, "\n# {}", doc.description);
        if !doc.operations.is_empty() {
            let _ = writeln!(out, "# {}", doc.operations);
        }
        let _ = writeln!(out, "#\"{}\": \"{}\"", doc.name, doc.check);
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Check(Check),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    // Parentheses may touch words ("(role:a"), as oslo.policy allows.
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    // ... but not inside %(key)s, which the line above split apart.
    let spaced = spaced.replace("% ( ", "%(").replace(" ) s", ")s");
    for word in spaced.split_whitespace() {
        tokens.push(match word.to_lowercase().as_str() {
            "(" => Token::Open,
            ")" => Token::Close,
            "and" => Token::And,
            "or" => Token::Or,
            "not" => Token::Not,
            _ => Token::Check(parse_check(word)?),
        });
    }
    Ok(tokens)
}

fn parse_value(text: &str, left: bool) -> Result<Value, String> {
    if let Some(key) = text.strip_prefix("%(").and_then(|t| t.strip_suffix(")s")) {
        if key.is_empty() {
            return Err("empty %()s".into());
        }
        return Ok(Value::Target(key.to_owned()));
    }
    for quote in ['\'', '"'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return Ok(Value::Literal(text[1..text.len() - 1].to_owned()));
        }
    }
    if text.contains("%(") {
        return Err(format!("{text:?}: expected %(key)s"));
    }
    Ok(if left {
        Value::Credential(text.to_owned())
    } else {
        Value::Literal(text.to_owned())
    })
}

fn parse_check(word: &str) -> Result<Check, String> {
    match word {
        "@" => return Ok(Check::Always),
        "!" => return Ok(Check::Never),
        _ => {}
    }
    let Some((kind, rest)) = word.split_once(':') else {
        return Err(format!(
            "{word:?} is not a check: expected @, !, rule:NAME, role:NAME or ATTRIBUTE:VALUE"
        ));
    };
    if kind.is_empty() || rest.is_empty() {
        return Err(format!("{word:?}: both sides of ':' must be given"));
    }
    Ok(match kind {
        "rule" => Check::Rule(rest.to_owned()),
        "role" => Check::Role(parse_value(rest, false)?),
        _ => Check::Generic {
            left: parse_value(kind, true)?,
            right: parse_value(rest, false)?,
        },
    })
}

/// Parses a rule. The empty rule allows everything, as in oslo.policy.
fn parse(text: &str) -> Result<Check, String> {
    let tokens = tokenize(text)?;
    if tokens.is_empty() {
        return Ok(Check::Always);
    }
    let mut parser = Parser { tokens, pos: 0 };
    let check = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!(
            "unexpected {} after a complete rule",
            parser.describe()
        ));
    }
    Ok(check)
}

/// Recursive descent with oslo.policy's precedence: `not` binds tightest,
/// then `and`, then `or`.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "end of rule".into(),
            Some(Token::Open) => "'('".into(),
            Some(Token::Close) => "')'".into(),
            Some(Token::And) => "'and'".into(),
            Some(Token::Or) => "'or'".into(),
            Some(Token::Not) => "'not'".into(),
            Some(Token::Check(_)) => "a check".into(),
        }
    }

    fn or(&mut self) -> Result<Check, String> {
        let mut items = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::Or(items)
        })
    }

    fn and(&mut self) -> Result<Check, String> {
        let mut items = vec![self.not()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::And(items)
        })
    }

    fn not(&mut self) -> Result<Check, String> {
        if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            return Ok(Check::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Check, String> {
        match self.peek().cloned() {
            Some(Token::Check(check)) => {
                self.pos += 1;
                Ok(check)
            }
            Some(Token::Open) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::Close) {
                    return Err(format!("expected ')' but found {}", self.describe()));
                }
                self.pos += 1;
                Ok(inner)
            }
            _ => Err(format!(
                "expected a check or '(' but found {}",
                self.describe()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(project: &str, roles: &[&str]) -> Credentials {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        Credentials::new(&[("project_id", project), ("user_id", "u1")], &roles)
    }

    #[test]
    fn defaults_parse_and_follow_secure_rbac() {
        for doc in DEFAULTS {
            assert!(parse(doc.check).is_ok(), "{}", doc.name);
        }
        let p = Policy::defaults();
        let own = [("project_id", "a")];
        let other = [("project_id", "b")];
        let member = creds("a", &["member", "reader"]);
        let reader = creds("a", &["reader"]);
        let admin = creds("a", &["admin", "member", "reader"]);
        for rule in [
            "create_forward",
            "update_forward",
            "delete_forward",
            "get_forward",
        ] {
            assert!(p.check(rule, &member, &own), "{rule}");
            assert!(!p.check(rule, &member, &other), "{rule}");
            assert!(p.check(rule, &admin, &other), "{rule}");
        }
        assert!(p.check("get_forward", &reader, &own));
        assert!(!p.check("get_forward", &reader, &other));
        for rule in ["create_forward", "update_forward", "delete_forward"] {
            assert!(!p.check(rule, &reader, &own), "{rule}");
        }
        for rule in ["list_all_projects", "create_forward:proxy", "get_proxy"] {
            assert!(!p.check(rule, &member, &own), "{rule}");
            assert!(p.check(rule, &admin, &own), "{rule}");
        }
        assert!(!p.check("no_such_rule", &admin, &own));
    }

    #[test]
    fn the_language() {
        let p = Policy::from_yaml(
            "p.yaml",
            r#"
always: "@"
never: "!"
empty: ""
nested: "(role:a or role:b) and not role:c"
precedence: "role:a or role:b and role:c"
literal: "user_id:'u1'"
literal_left: "'x':%(name)s"
by_target: "user_id:%(user_id)s"
dotted: "project_id:%(forward.project_id)s"
unknown_rule: "rule:nobody_defined_this"
missing_key: "project_id:%(absent)s"
role_from_target: "role:%(role)s"
touching: "(role:a)"
"#,
        )
        .unwrap();
        let a = creds("p", &["A"]);
        let ac = creds("p", &["a", "c"]);
        let bc = creds("p", &["b", "c"]);
        assert!(p.check("always", &a, &[]));
        assert!(!p.check("never", &a, &[]));
        assert!(p.check("empty", &a, &[]));
        assert!(
            p.check("nested", &a, &[]),
            "roles compare case-insensitively"
        );
        assert!(!p.check("nested", &ac, &[]));
        assert!(p.check("precedence", &a, &[]));
        assert!(p.check("precedence", &bc, &[]));
        assert!(!p.check("precedence", &creds("p", &["b"]), &[]));
        assert!(p.check("literal", &a, &[]));
        assert!(!p.check("literal", &creds("p", &[]).clone_with_user("u2"), &[]));
        assert!(p.check("literal_left", &a, &[("name", "x")]));
        assert!(p.check("by_target", &a, &[("user_id", "u1")]));
        assert!(!p.check("by_target", &a, &[("user_id", "u2")]));
        assert!(p.check("dotted", &a, &[("forward.project_id", "p")]));
        assert!(!p.check("unknown_rule", &a, &[]));
        assert!(!p.check("missing_key", &a, &[]));
        assert!(p.check("role_from_target", &a, &[("role", "a")]));
        assert!(p.check("touching", &a, &[]));
    }

    impl Credentials {
        fn clone_with_user(mut self, user: &str) -> Credentials {
            self.attributes.insert("user_id".into(), user.into());
            self
        }
    }

    #[test]
    fn overrides_replace_defaults_only_where_given() {
        let p = Policy::from_yaml(
            "p.yaml",
            "\"create_forward\": \"rule:admin_only\"\nget_proxy: \"rule:admin_or_project_reader\"\n",
        )
        .unwrap();
        let member = creds("a", &["member", "reader"]);
        assert!(!p.check("create_forward", &member, &[("project_id", "a")]));
        assert!(p.check("get_proxy", &member, &[("project_id", "a")]));
        assert!(p.check("delete_forward", &member, &[("project_id", "a")]));
    }

    #[test]
    fn bad_files_name_the_file_and_rule() {
        let cases = [
            (
                "create_forward: \"role:admin and\"\n",
                "p.yaml: rule \"create_forward\": expected a check or '(' but found end of rule",
            ),
            (
                "create_forward: \"(role:admin\"\n",
                "p.yaml: rule \"create_forward\": expected ')' but found end of rule",
            ),
            (
                "create_forward: \"admin\"\n",
                "p.yaml: rule \"create_forward\": \"admin\" is not a check: expected @, !, rule:NAME, role:NAME or ATTRIBUTE:VALUE",
            ),
            (
                "create_forward: [1]\n",
                "p.yaml: rule \"create_forward\": expected a string such as \"role:admin\"",
            ),
            (
                "a: \"rule:b\"\nb: \"rule:a\"\n",
                "p.yaml: rule \"a\": rules refer to each other in a loop: a -> b -> a",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Policy::from_yaml("p.yaml", text).unwrap_err().to_string(),
                expected
            );
        }
        assert!(matches!(
            Policy::from_yaml("p.yaml", "- a\n- b\n"),
            Err(PolicyError::Syntax { .. })
        ));
    }

    #[test]
    fn the_sample_parses_back_to_the_defaults() {
        let p = Policy::from_yaml("sample", &sample()).unwrap();
        let uncommented: String = sample()
            .lines()
            .filter_map(|l| l.strip_prefix("#\""))
            .map(|l| format!("\"{l}\n"))
            .collect();
        let q = Policy::from_yaml("uncommented", &uncommented).unwrap();
        for doc in DEFAULTS {
            assert_eq!(p.rule_text(doc.name), Some(doc.check));
            assert_eq!(q.rule_text(doc.name), Some(doc.check));
        }
    }

    #[test]
    fn committed_sample_is_fresh() {
        let committed = include_str!("../../../etc/policy.yaml.sample");
        assert!(
            committed == sample(),
            "etc/policy.yaml.sample is stale: run `cargo run --bin navigator-server -- policy sample > etc/policy.yaml.sample`"
        );
    }
}
