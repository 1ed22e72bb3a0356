//! Output formatting in the style of openstackclient (cliff): `-f
//! table|json|yaml|value|csv` and `-c COLUMN`, for lists (one row per
//! resource) and for single resources (`Field | Value`).
//!
//! Formatters work on `serde_json::Value` objects and an ordered set of
//! [`Column`]s, so they know nothing about forwards or proxies and can be
//! unit-tested on their own.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use comfy_table::{ContentLineStyle, LineStyle, Table, TableStyle};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::errors::UsageError;

/// openstackclient's table look: `+---+` rules above and below the header and
/// at the bottom, and none between rows.
const OSC_STYLE: TableStyle = TableStyle::new()
    .top_border(LineStyle::new('+', '-', '+', '+'))
    .header_lines(ContentLineStyle::new('|', '|', '|'))
    .header_separator(LineStyle::new('+', '-', '+', '+'))
    .content_lines(ContentLineStyle::new('|', '|', '|'))
    .bottom_border(LineStyle::new('+', '-', '+', '+'));

/// Stands in for a field that a resource does not have, so that every column
/// renders something.
static NULL: Value = Value::Null;

/// How to print a result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
    Value,
    Csv,
}

/// The `-f`/`-c` options of every command that prints a resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Output formatters")]
pub struct OutputArgs {
    /// The output format
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show only this column (repeat for more); a display name such as
    /// "External Port" or a field name such as external_port, in any case
    #[arg(short = 'c', long = "column", value_name = "COLUMN")]
    pub columns: Vec<String>,
}

/// One attribute of a resource: its API field name and its display name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// The key in the API's JSON, e.g. `external_port`.
    pub field: &'static str,
    /// The heading a list shows, e.g. `External Port`.
    pub heading: &'static str,
}

impl Column {
    pub const fn new(field: &'static str, heading: &'static str) -> Column {
        Column { field, heading }
    }

    fn matches(&self, name: &str) -> bool {
        let name = name.trim();
        self.field.eq_ignore_ascii_case(name) || self.heading.eq_ignore_ascii_case(name)
    }
}

/// Whether the output describes many resources or one; decides the labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A list: headings are display names (`External Port`).
    List,
    /// A single resource: labels are field names (`external_port`).
    Show,
}

impl Shape {
    fn label(self, column: &Column) -> &'static str {
        match self {
            Shape::List => column.heading,
            Shape::Show => column.field,
        }
    }
}

/// The columns to print: `defaults` when no `-c` was given, otherwise the
/// requested ones out of `all`, in the order of `all` (as cliff does).
///
/// Called before any request, so that a typo in `-c` cannot follow a create
/// that already happened.
pub fn select_columns(
    all: &[Column],
    defaults: &[Column],
    requested: &[String],
    shape: Shape,
) -> Result<Vec<Column>, UsageError> {
    if requested.is_empty() {
        return Ok(defaults.to_vec());
    }
    if let Some(unknown) = requested
        .iter()
        .find(|name| !all.iter().any(|c| c.matches(name)))
    {
        let allowed: Vec<&str> = all.iter().map(|c| shape.label(c)).collect();
        return Err(UsageError(format!(
            "unknown column '{unknown}' for -c/--column; choose from: {}",
            allowed.join(", ")
        )));
    }
    Ok(all
        .iter()
        .filter(|c| requested.iter().any(|name| c.matches(name)))
        .copied()
        .collect())
}

/// Renders resources (JSON objects) as a list.
pub fn render_list(columns: &[Column], rows: &[Value], format: Format) -> Result<String> {
    let shape = Shape::List;
    let mut out = String::new();
    match format {
        Format::Table => {
            // Like cliff without --print-empty: an empty list prints nothing.
            if !rows.is_empty() {
                let mut table = new_table(columns.iter().map(|c| c.heading));
                for row in rows {
                    table.add_row(columns.iter().map(|c| cell_text(field(row, c))));
                }
                out = table_text(&table);
            }
        }
        Format::Json => {
            let objects: Vec<Ordered<'_>> = rows
                .iter()
                .map(|r| Ordered::new(columns, r, shape))
                .collect();
            out = serde_json::to_string_pretty(&objects).context("cannot encode JSON")?;
            out.push('\n');
        }
        Format::Yaml => {
            let objects: Vec<Ordered<'_>> = rows
                .iter()
                .map(|r| Ordered::new(columns, r, shape))
                .collect();
            out = yaml_text(&objects)?;
        }
        Format::Value => {
            for row in rows {
                let values: Vec<String> =
                    columns.iter().map(|c| cell_text(field(row, c))).collect();
                out.push_str(&values.join(" "));
                out.push('\n');
            }
        }
        Format::Csv => {
            let header: Vec<String> = columns.iter().map(|c| csv_quote(c.heading)).collect();
            out.push_str(&header.join(","));
            out.push('\n');
            for row in rows {
                let values: Vec<String> = columns.iter().map(|c| csv_cell(field(row, c))).collect();
                out.push_str(&values.join(","));
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Renders one resource (a JSON object).
pub fn render_show(columns: &[Column], object: &Value, format: Format) -> Result<String> {
    let shape = Shape::Show;
    let mut out = String::new();
    match format {
        Format::Table => {
            let mut table = new_table(["Field", "Value"]);
            for column in columns {
                table.add_row([column.field.to_owned(), cell_text(field(object, column))]);
            }
            out = table_text(&table);
        }
        Format::Json => {
            out = serde_json::to_string_pretty(&Ordered::new(columns, object, shape))
                .context("cannot encode JSON")?;
            out.push('\n');
        }
        Format::Yaml => out = yaml_text(&Ordered::new(columns, object, shape))?,
        Format::Value => {
            for column in columns {
                out.push_str(&cell_text(field(object, column)));
                out.push('\n');
            }
        }
        Format::Csv => {
            // cliff's show formatters have no csv; a one-row csv is the
            // obvious meaning.
            let header: Vec<String> = columns.iter().map(|c| csv_quote(c.field)).collect();
            let values: Vec<String> = columns.iter().map(|c| csv_cell(field(object, c))).collect();
            out = format!("{}\n{}\n", header.join(","), values.join(","));
        }
    }
    Ok(out)
}

/// Writes to stdout. A closed pipe (`navigator forward list | head -1`) is
/// not an error worth reporting.
pub fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

fn field<'a>(object: &'a Value, column: &Column) -> &'a Value {
    object.get(column.field).unwrap_or(&NULL)
}

fn new_table<T: ToString>(header: impl IntoIterator<Item = T>) -> Table {
    let mut table = Table::new();
    table.load_style(OSC_STYLE);
    table.set_header(header.into_iter().map(|h| h.to_string()));
    table
}

fn table_text(table: &Table) -> String {
    let mut text = table.to_string();
    text.push('\n');
    text
}

fn yaml_text(value: &impl Serialize) -> Result<String> {
    let mut text = yaml_serde::to_string(value).context("cannot encode YAML")?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// The human form of a value: strings bare, nothing for null, lists joined by
/// ", " (as osc's `ListColumn`), objects as `key='value'` pairs (as its
/// `DictColumn`).
fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(cell_text).collect::<Vec<_>>().join(", "),
        Value::Object(fields) => fields
            .iter()
            .map(|(key, value)| match value {
                Value::Array(_) | Value::Object(_) => format!("{key}=[{}]", cell_text(value)),
                _ => format!("{key}='{}'", cell_text(value)),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Quotes like Python's `csv.QUOTE_NONNUMERIC`, which osc uses: numbers bare,
/// null empty, everything else quoted.
fn csv_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Number(number) => number.to_string(),
        other => csv_quote(&cell_text(other)),
    }
}

fn csv_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// A JSON object restricted to some columns, serialised in column order
/// (serde_json's own map would sort the keys).
struct Ordered<'a> {
    entries: Vec<(&'static str, &'a Value)>,
}

impl<'a> Ordered<'a> {
    fn new(columns: &[Column], object: &'a Value, shape: Shape) -> Ordered<'a> {
        Ordered {
            entries: columns
                .iter()
                .map(|c| (shape.label(c), field(object, c)))
                .collect(),
        }
    }
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Asserts that `columns` name exactly the fields of the API object `value`,
/// so that a field added to the API cannot be forgotten by the CLI.
#[cfg(test)]
pub(crate) fn assert_columns_match(columns: &[Column], value: &serde_json::Value) {
    let mut fields: Vec<&str> = value
        .as_object()
        .expect("an API object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut ours: Vec<&str> = columns.iter().map(|c| c.field).collect();
    fields.sort_unstable();
    ours.sort_unstable();
    assert_eq!(fields, ours);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLUMNS: [Column; 4] = [
        Column::new("id", "ID"),
        Column::new("external_port", "External Port"),
        Column::new("description", "Description"),
        Column::new("addresses", "Addresses"),
    ];

    fn rows() -> Vec<Value> {
        vec![
            json!({"id": "a1", "external_port": 20022, "description": "ssh \"jump\"", "addresses": ["10.0.0.1", "2001:db8::1"]}),
            json!({"id": "b2", "external_port": 20053, "description": null, "addresses": []}),
        ]
    }

    fn names(columns: &[Column]) -> Vec<&str> {
        columns.iter().map(|c| c.field).collect()
    }

    #[test]
    fn list_table_has_osc_rules() {
        let text = render_list(&COLUMNS[..2], &rows(), Format::Table).unwrap();
        assert_eq!(
            text,
            "+----+---------------+\n\
             | ID | External Port |\n\
             +----+---------------+\n\
             | a1 | 20022         |\n\
             | b2 | 20053         |\n\
             +----+---------------+\n"
        );
    }

    #[test]
    fn empty_list_table_prints_nothing_but_json_is_an_array() {
        assert_eq!(render_list(&COLUMNS, &[], Format::Table).unwrap(), "");
        assert_eq!(render_list(&COLUMNS, &[], Format::Json).unwrap(), "[]\n");
        assert_eq!(
            render_list(&COLUMNS[..1], &[], Format::Csv).unwrap(),
            "\"ID\"\n"
        );
    }

    #[test]
    fn show_table_is_field_and_value() {
        let text = render_show(&COLUMNS, &rows()[0], Format::Table).unwrap();
        assert_eq!(
            text,
            "+---------------+-----------------------+\n\
             | Field         | Value                 |\n\
             +---------------+-----------------------+\n\
             | id            | a1                    |\n\
             | external_port | 20022                 |\n\
             | description   | ssh \"jump\"            |\n\
             | addresses     | 10.0.0.1, 2001:db8::1 |\n\
             +---------------+-----------------------+\n"
        );
    }

    #[test]
    fn list_json_keeps_column_order_and_types() {
        let text = render_list(&COLUMNS[..3], &rows(), Format::Json).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!([
                {"ID": "a1", "External Port": 20022, "Description": "ssh \"jump\""},
                {"ID": "b2", "External Port": 20053, "Description": null},
            ])
        );
        // Column order, not alphabetical order.
        let id = text.find("\"ID\"").unwrap();
        let port = text.find("\"External Port\"").unwrap();
        let description = text.find("\"Description\"").unwrap();
        assert!(id < port && port < description, "{text}");
    }

    #[test]
    fn show_json_uses_field_names() {
        let text = render_show(&COLUMNS, &rows()[0], Format::Json).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, rows()[0]);
    }

    #[test]
    fn yaml_round_trips() {
        let text = render_show(&COLUMNS[..2], &rows()[0], Format::Yaml).unwrap();
        assert_eq!(text, "id: a1\nexternal_port: 20022\n");
        let list = render_list(&COLUMNS[..2], &rows(), Format::Yaml).unwrap();
        let parsed: Value = yaml_serde::from_str(&list).unwrap();
        assert_eq!(
            parsed,
            json!([{"ID": "a1", "External Port": 20022}, {"ID": "b2", "External Port": 20053}])
        );
    }

    #[test]
    fn value_format() {
        assert_eq!(
            render_list(&COLUMNS[..2], &rows(), Format::Value).unwrap(),
            "a1 20022\nb2 20053\n"
        );
        assert_eq!(
            render_show(&COLUMNS[..1], &rows()[0], Format::Value).unwrap(),
            "a1\n"
        );
        assert_eq!(
            render_show(&COLUMNS[2..], &rows()[1], Format::Value).unwrap(),
            "\n\n"
        );
    }

    #[test]
    fn csv_quotes_non_numeric_values() {
        let text = render_list(&COLUMNS, &rows(), Format::Csv).unwrap();
        assert_eq!(
            text,
            "\"ID\",\"External Port\",\"Description\",\"Addresses\"\n\
             \"a1\",20022,\"ssh \"\"jump\"\"\",\"10.0.0.1, 2001:db8::1\"\n\
             \"b2\",20053,,\"\"\n"
        );
    }

    #[test]
    fn columns_are_chosen_by_heading_or_field_in_any_case() {
        let all = select_columns(&COLUMNS, &COLUMNS[..2], &[], Shape::List).unwrap();
        assert_eq!(names(&all), ["id", "external_port"]);
        let requested = ["external port".to_owned(), "ID".to_owned(), "Id".to_owned()];
        let chosen = select_columns(&COLUMNS, &COLUMNS[..2], &requested, Shape::List).unwrap();
        // In the resource's order, once each.
        assert_eq!(names(&chosen), ["id", "external_port"]);
        let chosen =
            select_columns(&COLUMNS, &COLUMNS, &["DESCRIPTION".to_owned()], Shape::Show).unwrap();
        assert_eq!(names(&chosen), ["description"]);
    }

    #[test]
    fn unknown_column_names_the_allowed_ones() {
        let err = select_columns(&COLUMNS, &COLUMNS, &["port".to_owned()], Shape::List)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown column 'port' for -c/--column; choose from: ID, External Port, Description, Addresses"
        );
        let err = select_columns(&COLUMNS, &COLUMNS, &["nope".to_owned()], Shape::Show)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("choose from: id, external_port, description, addresses"),
            "{err}"
        );
    }
}
