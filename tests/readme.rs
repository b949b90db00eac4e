//! README.md's generated parts stay true: its troubleshooting section is `tracer doctor
//! --markdown`, and its column reference names every column the tracer writes.

mod support;

use support::*;
use tracer::schema::rows::{EventRow, QueueRow, RankRow, RequestRow, StepRow};

#[test]
fn readme_troubleshooting_is_doctors_checks() {
    let generated = tracer_ok(&["doctor", "--markdown"]);
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = "<!-- doctor:begin -->\n";
    let section = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once("<!-- doctor:end -->"))
        .map(|(s, _)| s)
        .expect("README has a doctor section");
    assert_eq!(
        section, generated,
        "README's troubleshooting is stale: paste `tracer doctor --markdown`"
    );
}

#[test]
fn readme_column_reference_names_every_column() {
    use tracer::live::sinks::csv_sink::header;
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split_once("## Output columns")
        .and_then(|(_, rest)| rest.split_once("\n## "))
        .map(|(s, _)| s)
        .expect("README has an Output columns section");
    for (file, columns) in [
        ("steps.csv", header::<StepRow>()),
        ("requests.csv", header::<RequestRow>()),
        ("events.csv", header::<EventRow>()),
        ("queues.csv", header::<QueueRow>()),
        ("ranks.csv", header::<RankRow>()),
    ] {
        let table = section
            .split_once(&format!("`{file}`"))
            .map(|(_, rest)| rest.split("\n\n`").next().unwrap())
            .unwrap_or_else(|| panic!("no table for {file}"));
        for column in columns {
            assert!(
                table.contains(&format!("`{column}`")),
                "{file}: column {column} is not in README's reference"
            );
        }
    }
}
