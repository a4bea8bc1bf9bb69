//! Templates in step parameters (minijinja, strict): what a template refers to, and rendering.
//!
//! The injection rule: in a **script** field every `{{ value }}` is shell-quoted as one word, so
//! a value from the inventory, a step output or an execution parameter can never change the
//! structure of the script. The escape hatch is `{{ value | bare }}`, which inserts a value
//! unquoted only when it is a plain token (letters, digits and `_ . / : @ % + = , -`) and fails
//! the render otherwise. `safe` is refused in scripts. In every other field values are inserted
//! as text and the field is validated after rendering; `env` values reach the process as
//! environment variables, not through a shell.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Object, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

const SHELL: &str = "shell";

/// How a string field is used, which decides its escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldUse {
    /// Text of a script run by a shell: values are shell-quoted.
    Script,
    /// Any other field: values are inserted as text.
    Plain,
}

pub struct TemplateEngine {
    plain: Environment<'static>,
    shell: Environment<'static>,
}

impl Default for TemplateEngine {
    fn default() -> Self {
        Self::new()
    }
}

/// True when `s` holds template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl TemplateEngine {
    pub fn new() -> Self {
        let mut plain = Environment::new();
        plain.set_undefined_behavior(UndefinedBehavior::Strict);
        plain.set_auto_escape_callback(|_| AutoEscape::None);
        plain.add_filter("bare", bare);

        let mut shell = Environment::new();
        shell.set_undefined_behavior(UndefinedBehavior::Strict);
        shell.set_auto_escape_callback(|_| AutoEscape::Custom(SHELL.into()));
        shell.set_formatter(shell_formatter);
        shell.add_filter("bare", bare);
        shell.add_filter("safe", refuse_safe);
        Self { plain, shell }
    }

    fn env(&self, use_: FieldUse) -> &Environment<'static> {
        match use_ {
            FieldUse::Script => &self.shell,
            FieldUse::Plain => &self.plain,
        }
    }

    /// The dotted names a template reads, such as `steps.recover.outputs.hosts.web.private_ip`;
    /// a syntax error is returned as text.
    pub fn references(&self, source: &str) -> Result<BTreeSet<String>, String> {
        let template = self
            .plain
            .template_from_str(source)
            .map_err(|e| describe(&e))?;
        Ok(template.undeclared_variables(true).into_iter().collect())
    }

    /// Renders `source` with `context`; any undefined name is an error, not an empty string.
    pub fn render(&self, source: &str, use_: FieldUse, context: &Value) -> Result<String, String> {
        if !is_template(source) {
            return Ok(source.to_owned());
        }
        self.env(use_)
            .render_str(source, context)
            .map_err(|e| describe(&e))
    }
}

fn describe(e: &Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Shell-quotes every value printed in a script unless `bare` marked it safe.
fn shell_formatter(
    out: &mut minijinja::Output,
    state: &mut State,
    value: &Value,
) -> Result<(), Error> {
    let shell = matches!(state.auto_escape(), AutoEscape::Custom(name) if name == SHELL);
    if !shell || value.is_safe() {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value.to_string();
    let quoted = shlex::try_quote(&text).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "a value holds a NUL character and cannot be quoted",
        )
    })?;
    out.write_str(&quoted)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write the rendered script"))
}

/// `{{ value | bare }}`: the value unquoted, allowed only for plain tokens (and for values
/// still pending in a dry run, which show as `<steps...>`).
fn bare(value: Value) -> Result<Value, Error> {
    if value.downcast_object_ref::<Pending>().is_some() {
        return Ok(Value::from_safe_string(value.to_string()));
    }
    let text = value.to_string();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c));
    if plain {
        Ok(Value::from_safe_string(text))
    } else {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            "`bare` only passes plain tokens (letters, digits, _ . / : @ % + = , -); this value must stay quoted",
        ))
    }
}

fn refuse_safe(_: Value) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        "`safe` is not allowed in scripts; values are shell-quoted, use `bare` for plain tokens",
    ))
}

/// A value that exists only once the plan runs (a step's output): it renders as `<path>` and
/// any attribute of it is another pending value.
#[derive(Debug)]
pub struct Pending(pub String);

impl Object for Pending {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(Value::from_object(Pending(format!("{}.{key}", self.0))))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn references_are_dotted_paths() {
        let e = TemplateEngine::new();
        let refs = e
            .references("sed -i s/{{ resources.nginx.private_ip }}/{{ steps.recover.outputs.hosts.wordpress.private_ip }}/ {{ params.conf }}")
            .unwrap();
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec![
                "params.conf",
                "resources.nginx.private_ip",
                "steps.recover.outputs.hosts.wordpress.private_ip"
            ]
        );
        assert!(e.references("{{ unclosed").is_err());
    }

    #[test]
    fn script_values_are_shell_quoted_and_plain_ones_are_not() {
        let e = TemplateEngine::new();
        let ctx = context! { params => context! { x => "a b; rm -rf /" } };
        assert_eq!(
            e.render("echo {{ params.x }}", FieldUse::Script, &ctx)
                .unwrap(),
            "echo 'a b; rm -rf /'"
        );
        assert_eq!(
            e.render("http://h/{{ params.x }}", FieldUse::Plain, &ctx)
                .unwrap(),
            "http://h/a b; rm -rf /"
        );
    }

    #[test]
    fn bare_passes_plain_tokens_only_and_safe_is_refused_in_scripts() {
        let e = TemplateEngine::new();
        let ctx = context! { ip => "10.0.0.1", evil => "$(reboot)" };
        assert_eq!(
            e.render("ping {{ ip | bare }}", FieldUse::Script, &ctx)
                .unwrap(),
            "ping 10.0.0.1"
        );
        assert!(e
            .render("ping {{ evil | bare }}", FieldUse::Script, &ctx)
            .is_err());
        assert!(e
            .render("ping {{ evil | safe }}", FieldUse::Script, &ctx)
            .is_err());
    }

    #[test]
    fn an_undefined_name_is_an_error_not_an_empty_string() {
        let e = TemplateEngine::new();
        let ctx = context! { params => context! { a => 1 } };
        assert!(e.render("{{ params.b }}", FieldUse::Plain, &ctx).is_err());
        assert!(e.render("{{ nothing }}", FieldUse::Script, &ctx).is_err());
    }

    #[test]
    fn pending_outputs_render_as_their_path() {
        let e = TemplateEngine::new();
        let ctx = context! {
            steps => context! { recover => context! { outputs => Value::from_object(Pending("steps.recover.outputs".into())) } }
        };
        assert_eq!(
            e.render(
                "{{ steps.recover.outputs.hosts.web.private_ip }}",
                FieldUse::Plain,
                &ctx
            )
            .unwrap(),
            "<steps.recover.outputs.hosts.web.private_ip>"
        );
    }
}
