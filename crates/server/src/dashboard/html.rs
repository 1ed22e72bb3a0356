//! The dashboard's HTML, rendered on the server. Every value that did not
//! come from this file goes through [`esc`]; forms use real labels, buttons
//! and links, so the page works from the keyboard and without JavaScript
//! (the script only refreshes the status column).

use std::collections::HashMap;
use std::fmt::Write as _;

use navigator_api::v1::{Forward, ForwardDetail, Proxy};

use super::session::{Flash, Session};

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a form shows: the values entered, errors per field, and an error
/// about the whole form.
#[derive(Debug, Default, Clone)]
pub struct FormState {
    pub values: HashMap<String, String>,
    pub errors: HashMap<String, String>,
    pub general: Option<String>,
}

impl FormState {
    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }
}

/// One labelled input with its error (linked by `aria-describedby`).
fn input(
    out: &mut String,
    form: &FormState,
    prefix: &str,
    name: &str,
    label: &str,
    attrs: &str,
    hint: &str,
) {
    let id = format!("{prefix}-{name}");
    let error = form.errors.get(name);
    let mut described = Vec::new();
    if !hint.is_empty() {
        described.push(format!("{id}-hint"));
    }
    if error.is_some() {
        described.push(format!("{id}-error"));
    }
    let _ = write!(
        out,
        "<div class=\"field{}\"><label for=\"{id}\">{}</label>",
        if error.is_some() { " invalid" } else { "" },
        esc(label)
    );
    let _ = write!(
        out,
        "<input id=\"{id}\" name=\"{name}\" value=\"{}\" {attrs}{}{}>",
        esc(form.value(name)),
        if described.is_empty() {
            String::new()
        } else {
            format!(" aria-describedby=\"{}\"", described.join(" "))
        },
        if error.is_some() {
            " aria-invalid=\"true\""
        } else {
            ""
        }
    );
    if !hint.is_empty() {
        let _ = write!(out, "<p class=\"hint\" id=\"{id}-hint\">{}</p>", esc(hint));
    }
    if let Some(error) = error {
        let _ = write!(
            out,
            "<p class=\"error\" id=\"{id}-error\" data-field-error=\"{name}\">{}</p>",
            esc(error)
        );
    }
    out.push_str("</div>");
}

/// The traffic controls of a forward: allowlist, connection limit and PROXY
/// protocol (the same three fields in the create and edit forms).
fn controls_inputs(out: &mut String, form: &FormState, prefix: &str) {
    input(
        out,
        form,
        prefix,
        "allowed_cidrs",
        "Allowed sources",
        "type=\"text\" spellcheck=\"false\"",
        "Optional: CIDRs separated by commas or spaces, e.g. 192.0.2.0/24, 2001:db8::/32. Empty allows everyone.",
    );
    input(
        out,
        form,
        prefix,
        "max_connections",
        "Max connections",
        "type=\"text\" inputmode=\"numeric\"",
        "Optional: most connections (UDP sessions) open at once, 1-1000000. Empty is no limit.",
    );
    let id = format!("{prefix}-proxy_protocol");
    let chosen = match form.value("proxy_protocol") {
        "" => "none",
        other => other,
    };
    let error = form.errors.get("proxy_protocol");
    let _ = write!(
        out,
        "<div class=\"field{}\"><label for=\"{id}\">PROXY protocol</label>\
         <select id=\"{id}\" name=\"proxy_protocol\" aria-describedby=\"{id}-hint{}\">",
        if error.is_some() { " invalid" } else { "" },
        if error.is_some() {
            format!(" {id}-error")
        } else {
            String::new()
        }
    );
    for (value, label) in [("none", "None"), ("v1", "v1 (text)"), ("v2", "v2 (binary)")] {
        let _ = write!(
            out,
            "<option value=\"{value}\"{}>{label}</option>",
            if chosen == value { " selected" } else { "" }
        );
    }
    let _ = write!(
        out,
        "</select><p class=\"hint\" id=\"{id}-hint\">Send the client's address to the instance \
         in HAProxy's PROXY header (TCP, relay proxies only; the instance must expect it).</p>"
    );
    if let Some(error) = error {
        let _ = write!(
            out,
            "<p class=\"error\" id=\"{id}-error\" data-field-error=\"proxy_protocol\">{}</p>",
            esc(error)
        );
    }
    out.push_str("</div>");
}

/// A forward's controls, as a definition list.
fn controls_summary(f: &Forward) -> String {
    let allowed = if f.allowed_cidrs.is_empty() {
        "everyone".to_owned()
    } else {
        f.allowed_cidrs.join(", ")
    };
    let max = f
        .max_connections
        .map_or_else(|| "no limit".to_owned(), |n| n.to_string());
    format!(
        "<dl class=\"controls\" data-controls><dt>Allowed sources</dt><dd data-allowed-cidrs>{}</dd>\
         <dt>Max connections</dt><dd data-max-connections>{}</dd>\
         <dt>PROXY protocol</dt><dd data-proxy-protocol>{}</dd></dl>",
        esc(&allowed),
        esc(&max),
        esc(&f.proxy_protocol)
    )
}

fn csrf_input(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf_token\" value=\"{}\">",
        esc(csrf)
    )
}

fn general_error(out: &mut String, form: &FormState) {
    if let Some(message) = &form.general {
        let _ = write!(
            out,
            "<p class=\"error form-error\" role=\"alert\" data-form-error>{}</p>",
            esc(message)
        );
    }
}

/// A whole page. `session` adds the navigation and the logout button.
pub fn page(title: &str, session: Option<&Session>, flash: Option<&Flash>, main: &str) -> String {
    let mut out = String::with_capacity(main.len() + 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Navigator</title>\
         <link rel=\"icon\" href=\"/dashboard/static/favicon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/dashboard/static/dashboard.css\">\
         <script src=\"/dashboard/static/dashboard.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to main content</a>\
         <header><p class=\"brand\"><a href=\"/dashboard\">Navigator</a></p>",
        esc(title)
    );
    if let Some(s) = session {
        out.push_str(
            "<nav aria-label=\"Main\"><ul><li><a href=\"/dashboard\">Port forwards</a></li>",
        );
        if s.proxies_visible {
            out.push_str("<li><a href=\"/dashboard/proxies\">Proxies</a></li>");
        }
        let _ = write!(
            out,
            "</ul></nav><div class=\"who\"><span data-user>{}</span> · project <span data-project>{}</span>\
             <form method=\"post\" action=\"/dashboard/logout\" class=\"inline\">{}\
             <button type=\"submit\">Log out</button></form></div>",
            esc(&s.user),
            esc(&s.project),
            csrf_input(&s.csrf)
        );
    }
    let _ = write!(
        out,
        "</header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>",
        esc(title)
    );
    if let Some(flash) = flash {
        let _ = write!(
            out,
            "<p class=\"flash{}\" role=\"{}\" data-flash>{}</p>",
            if flash.error { " error" } else { "" },
            if flash.error { "alert" } else { "status" },
            esc(&flash.text)
        );
    }
    out.push_str(main);
    out.push_str("</main></body></html>");
    out
}

/// The login form: Keystone credentials, or only a project with noauth.
pub fn login(keystone: bool, form: &FormState, login_csrf: &str) -> String {
    let mut out = String::new();
    general_error(&mut out, form);
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/dashboard/login\" class=\"card\" novalidate>{}",
        csrf_input(login_csrf)
    );
    if keystone {
        out.push_str("<p>Log in with your OpenStack (Keystone) account.</p>");
        input(
            &mut out,
            form,
            "login",
            "username",
            "User name",
            "type=\"text\" autocomplete=\"username\" required",
            "",
        );
        input(
            &mut out,
            form,
            "login",
            "password",
            "Password",
            "type=\"password\" autocomplete=\"current-password\" required",
            "",
        );
        input(
            &mut out,
            form,
            "login",
            "project",
            "Project",
            "type=\"text\" required",
            "The project name whose port forwards you manage.",
        );
        input(
            &mut out,
            form,
            "login",
            "domain",
            "Domain",
            "type=\"text\" required",
            "The domain name of your user and project, usually Default.",
        );
    } else {
        out.push_str(
            "<p>This server runs without authentication (noauth, loopback only): \
             choose the project to act in.</p>",
        );
        input(
            &mut out,
            form,
            "login",
            "project",
            "Project",
            "type=\"text\" required",
            "Any project id; \"default\" is the CLI's.",
        );
    }
    out.push_str("<button type=\"submit\">Log in</button></form>");
    out
}

fn target(f: &Forward) -> String {
    host_port(&f.internal_ip_address, f.internal_port)
}

fn external(f: &Forward) -> String {
    host_port(&f.external_address, f.external_port)
}

/// `address:port`, with an IPv6 address in brackets.
fn host_port(address: &str, port: impl std::fmt::Display) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The status cell's content (also produced by the script on refresh).
fn status_cell(f: &Forward) -> String {
    let mut out = format!(
        "<span class=\"status status-{}\" data-status>{}</span>",
        esc(&f.status.to_ascii_lowercase()),
        esc(&f.status)
    );
    if let Some(reason) = f.status_reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = write!(
            out,
            " <span class=\"reason\" data-reason>{}</span>",
            esc(reason)
        );
    } else {
        out.push_str(" <span class=\"reason\" data-reason></span>");
    }
    out
}

/// The list of forwards with the create form.
pub fn forwards(session: &Session, forwards: &[Forward], form: &FormState) -> String {
    let mut out = String::new();
    if forwards.is_empty() {
        out.push_str("<p data-empty>No port forwards yet. Create one below.</p>");
    } else {
        out.push_str(
            "<table data-forwards><caption>Port forwards of this project \
             <span class=\"live\" aria-live=\"polite\" data-live></span></caption><thead><tr>\
             <th scope=\"col\">External address</th><th scope=\"col\">Target</th>\
             <th scope=\"col\">Protocol</th><th scope=\"col\">Status</th>\
             <th scope=\"col\">Proxy</th><th scope=\"col\">Description</th>\
             <th scope=\"col\">Actions</th></tr></thead><tbody>",
        );
        for f in forwards {
            let _ = write!(
                out,
                "<tr data-forward-id=\"{id}\" data-external-address=\"{addr}\" data-external-port=\"{port}\">\
                 <td data-external>{ext}</td><td data-target>{tgt}</td><td>{proto}</td>\
                 <td data-status-cell>{status}</td><td>{proxy}</td><td data-description>{desc}</td>\
                 <td class=\"actions\"><a href=\"/dashboard/forwards/{id}/edit\" \
                 aria-label=\"Edit forward {ext}\">Edit</a>\
                 <form method=\"post\" action=\"/dashboard/forwards/{id}/delete\" class=\"inline\">{csrf}\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Delete forward {ext}\">Delete</button>\
                 </form></td></tr>",
                id = esc(&f.id),
                addr = esc(&f.external_address),
                port = f.external_port,
                ext = esc(&external(f)),
                tgt = esc(&target(f)),
                proto = esc(&f.protocol.to_ascii_uppercase()),
                status = status_cell(f),
                proxy = esc(&f.proxy),
                desc = esc(&f.description),
                csrf = csrf_input(&session.csrf),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("<h2 id=\"create\">Create a port forward</h2>");
    general_error(&mut out, form);
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/dashboard/forwards\" class=\"card\" novalidate \
         aria-labelledby=\"create\">{}",
        csrf_input(&session.csrf)
    );
    let protocol = form.value("protocol");
    let _ = write!(
        out,
        "<div class=\"field\"><label for=\"create-protocol\">Protocol</label>\
         <select id=\"create-protocol\" name=\"protocol\">\
         <option value=\"tcp\"{}>TCP</option><option value=\"udp\"{}>UDP</option></select></div>",
        if protocol != "udp" { " selected" } else { "" },
        if protocol == "udp" { " selected" } else { "" },
    );
    input(
        &mut out,
        form,
        "create",
        "internal_ip_address",
        "Internal IP address",
        "type=\"text\" required spellcheck=\"false\"",
        "The instance's address, IPv4 or IPv6.",
    );
    input(
        &mut out,
        form,
        "create",
        "internal_port",
        "Internal port",
        "type=\"text\" inputmode=\"numeric\" required",
        "1-65535",
    );
    input(
        &mut out,
        form,
        "create",
        "external_port",
        "External port",
        "type=\"text\" inputmode=\"numeric\"",
        "Optional: empty picks a free port of the proxy's range.",
    );
    input(
        &mut out,
        form,
        "create",
        "description",
        "Description",
        "type=\"text\" maxlength=\"255\"",
        "",
    );
    controls_inputs(&mut out, form, "create");
    out.push_str("<button type=\"submit\">Create forward</button></form>");
    out
}

/// The retarget form of one forward.
pub fn edit(session: &Session, forward: &Forward, form: &FormState) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<p>Forward <code>{}</code> on <strong data-external>{}</strong> ({}), now to \
         <strong>{}</strong>. New connections go to the new target at once.</p>",
        esc(&forward.id),
        esc(&external(forward)),
        esc(&forward.protocol.to_ascii_uppercase()),
        esc(&target(forward))
    );
    out.push_str(&controls_summary(forward));
    general_error(&mut out, form);
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/dashboard/forwards/{}\" class=\"card\" novalidate>{}",
        esc(&forward.id),
        csrf_input(&session.csrf)
    );
    input(
        &mut out,
        form,
        "edit",
        "internal_ip_address",
        "Internal IP address",
        "type=\"text\" required spellcheck=\"false\"",
        "",
    );
    input(
        &mut out,
        form,
        "edit",
        "internal_port",
        "Internal port",
        "type=\"text\" inputmode=\"numeric\" required",
        "1-65535",
    );
    input(
        &mut out,
        form,
        "edit",
        "description",
        "Description",
        "type=\"text\" maxlength=\"255\"",
        "",
    );
    controls_inputs(&mut out, form, "edit");
    out.push_str(
        "<button type=\"submit\">Save</button> <a href=\"/dashboard\" class=\"button-link\">Cancel</a></form>",
    );
    out
}

/// What the proxy counted for one forward (`GET /v1/forwards/{id}`'s
/// `usage`), or why nothing is shown.
pub fn usage(forward: &ForwardDetail) -> String {
    let mut out = String::from("<h2>Usage</h2>");
    let Some(usage) = &forward.usage else {
        let why = forward
            .usage_unavailable
            .as_deref()
            .unwrap_or("the server gave no reason");
        let _ = write!(
            out,
            "<p class=\"reason\" data-usage-unavailable>No usage: {}.</p>",
            esc(why)
        );
        return out;
    };
    let _ = write!(
        out,
        "<table class=\"usage\" data-usage><tbody>\
         <tr><th scope=\"row\">Bytes in (clients to instance)</th><td data-bytes-in>{}</td></tr>\
         <tr><th scope=\"row\">Bytes out (instance to clients)</th><td data-bytes-out>{}</td></tr>\
         <tr><th scope=\"row\">Connections, total</th><td data-connections-total>{}</td></tr>\
         <tr><th scope=\"row\">Connections, open now</th><td data-connections-active>{}</td></tr>\
         <tr><th scope=\"row\">Last connection</th><td data-last-connection>{}</td></tr>\
         </tbody></table>\
         <p class=\"reason\">Counted by the proxy since it started carrying the forward.</p>",
        esc(&bytes(usage.bytes_in)),
        esc(&bytes(usage.bytes_out)),
        usage.connections_total,
        usage.connections_active,
        esc(usage.last_connection_at.as_deref().unwrap_or("never")),
    );
    out
}

/// `1536` → `1536 (1.5 KiB)`; below 1 KiB just the number.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = None;
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(name);
    }
    match unit {
        Some(unit) => format!("{n} ({value:.1} {unit})"),
        None => n.to_string(),
    }
}

/// The admin overview of proxies.
pub fn proxies(proxies: &[Proxy]) -> String {
    if proxies.is_empty() {
        return "<p>No proxy has registered yet.</p>".into();
    }
    let mut out = String::from(
        "<table data-proxies><caption>Forwarding nodes</caption><thead><tr>\
         <th scope=\"col\">Host</th><th scope=\"col\">State</th><th scope=\"col\">Backend</th>\
         <th scope=\"col\">External addresses</th><th scope=\"col\">Port range</th>\
         <th scope=\"col\">Forwards</th><th scope=\"col\">Load</th>\
         <th scope=\"col\">Last heartbeat</th></tr></thead><tbody>",
    );
    for p in proxies {
        let _ = write!(
            out,
            "<tr data-proxy=\"{host}\"><td>{host}</td><td><span class=\"status state-{state}\" data-state>{state}</span></td>\
             <td>{backend}</td><td>{addresses}</td><td>{range}</td><td>{count}</td>\
             <td>{load:.1}%</td><td>{beat}</td></tr>",
            host = esc(&p.host),
            state = esc(&p.state),
            backend = esc(&p.backend),
            addresses = esc(&p.external_addresses.join(", ")),
            range = esc(&p.port_range),
            count = p.forward_count,
            load = p.load * 100.0,
            beat = esc(p.last_heartbeat.as_deref().unwrap_or("-")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// A page with one paragraph (errors, refusals).
pub fn message(text: &str, link: Option<(&str, &str)>) -> String {
    let mut out = format!("<p data-message>{}</p>", esc(text));
    if let Some((href, label)) = link {
        let _ = write!(out, "<p><a href=\"{}\">{}</a></p>", esc(href), esc(label));
    }
    out
}

/// The project's quota use above the forwards table: "2 of 50 forwards, 4
/// of 1000 ports"; a resource at or over its limit is marked, since a create
/// would be refused.
pub fn quota_usage(quota: &navigator_api::quota::QuotaDetails) -> String {
    let part = |name: &str, d: navigator_api::quota::QuotaDetail| {
        let full = d.limit >= 0 && d.used >= d.limit;
        let text = if d.limit < 0 {
            format!("{} {name} (no limit)", d.used)
        } else {
            format!("{} of {} {name}", d.used, d.limit)
        };
        format!(
            "<span data-quota-{name}{}>{}</span>",
            if full { " class=\"full\"" } else { "" },
            esc(&text)
        )
    };
    let full = [quota.forwards, quota.ports]
        .iter()
        .any(|d| d.limit >= 0 && d.used >= d.limit);
    format!(
        "<p class=\"quota\" data-quota>Quota used: {}, {}{}</p>",
        part("forwards", quota.forwards),
        part("ports", quota.ports),
        if full {
            " &mdash; at the limit: new forwards are refused until some are deleted or an administrator raises the quota"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(host_port("192.0.2.7", 22), "192.0.2.7:22");
        assert_eq!(host_port("2001:db8::7", 22), "[2001:db8::7]:22");
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn field_errors_sit_next_to_their_input() {
        let mut form = FormState::default();
        form.values.insert("internal_port".into(), "<70000>".into());
        form.errors
            .insert("internal_port".into(), "70000 is outside 1-65535".into());
        let mut out = String::new();
        input(
            &mut out,
            &form,
            "create",
            "internal_port",
            "Internal port",
            "type=\"text\"",
            "",
        );
        assert!(out.contains("value=\"&lt;70000&gt;\""), "{out}");
        assert!(out.contains("aria-invalid=\"true\""), "{out}");
        assert!(
            out.contains("aria-describedby=\"create-internal_port-error\""),
            "{out}"
        );
        assert!(out.contains("id=\"create-internal_port-error\" data-field-error=\"internal_port\">70000 is outside 1-65535</p>"), "{out}");
    }

    fn detail(usage: Option<navigator_api::v1::Usage>, why: Option<&str>) -> ForwardDetail {
        let forward: Forward = serde_json::from_value(serde_json::json!({
            "id": "f1", "project_id": "p", "description": "", "protocol": "tcp",
            "external_address": "203.0.113.5", "external_port": 20022,
            "external_port_range": null, "internal_ip_address": "10.0.0.5",
            "internal_port": 22, "internal_port_range": null, "instance_id": null,
            "proxy": "px1", "status": "ACTIVE", "status_reason": null,
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"
        }))
        .unwrap();
        ForwardDetail {
            forward,
            usage,
            usage_unavailable: why.map(str::to_owned),
        }
    }

    #[test]
    fn usage_shows_counters_or_the_escaped_reason() {
        let out = usage(&detail(
            Some(navigator_api::v1::Usage {
                bytes_in: 1536,
                bytes_out: 10,
                connections_total: 4,
                connections_active: 1,
                last_connection_at: Some("2024-01-02T03:04:05Z".into()),
            }),
            None,
        ));
        assert!(
            out.contains("<td data-bytes-in>1536 (1.5 KiB)</td>"),
            "{out}"
        );
        assert!(out.contains("<td data-bytes-out>10</td>"), "{out}");
        assert!(out.contains("<td data-connections-active>1</td>"), "{out}");
        assert!(
            out.contains("<td data-last-connection>2024-01-02T03:04:05Z</td>"),
            "{out}"
        );
        let none = usage(&detail(
            None,
            Some("the <socat> backend does not count usage"),
        ));
        assert!(
            none.contains("No usage: the &lt;socat&gt; backend does not count usage."),
            "{none}"
        );
        assert!(!none.contains("data-usage>"), "{none}");
    }
}
