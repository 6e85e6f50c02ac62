//! How every command prints: `-o table` (the default: aligned columns, as
//! kubectl prints them), `-o json` or `-o yaml` (the same data, whole, for
//! scripts).

use std::fmt::Write as _;

use serde::Serialize;

/// `-o`: the output format every command takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The whole result as JSON.
    Json,
    /// The whole result as YAML.
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write the result as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the result as YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser_error::Error),
}

/// The result as JSON or YAML text (with a final newline); `None` for
/// [`Format::Table`], which each command renders itself.
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, OutputError> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_saphyr::to_string(value)?),
    })
}

/// Milliseconds as people read them: whole from 10 up, else at most two
/// decimals (`42`, `9.8`, `3`, `0.73`).
pub fn millis(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        let s = format!("{ms:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Writes `text` to stdout, whole, and flushes it.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// between columns, no trailing spaces (kubectl's layout). Widths count
/// characters, so a `✔` takes one column.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{cell:<width$}", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell_without_trailing_spaces() {
        let rows = vec![
            vec!["reviews-v1".to_string(), "✔".to_string(), "".to_string()],
            vec![
                "ratings".to_string(),
                "×".to_string(),
                "not ready".to_string(),
            ],
        ];
        assert_eq!(
            table(&["NAME", "OK", "REASON"], &rows),
            "NAME        OK  REASON\n\
             reviews-v1  ✔\n\
             ratings     ×   not ready\n"
        );
    }

    #[test]
    fn json_and_yaml_carry_the_same_data_and_table_is_left_to_the_command() {
        #[derive(Serialize)]
        struct Row {
            name: &'static str,
            ready: bool,
        }
        let row = Row {
            name: "web",
            ready: true,
        };
        assert_eq!(
            structured(Format::Json, &row).unwrap().unwrap(),
            "{\n  \"name\": \"web\",\n  \"ready\": true\n}\n"
        );
        assert_eq!(
            structured(Format::Yaml, &row).unwrap().unwrap(),
            "name: web\nready: true\n"
        );
        assert_eq!(structured(Format::Table, &row).unwrap(), None);
    }
}
