//! `cargo xtask modules`: the tracer crate's imports between its modules, checked for cycles
//! and against the layer rule, and its longest functions.
//!
//! A module is a file (a folder's `mod.rs` is the folder). Imports are the `use` trees and
//! `crate::`/`super::` paths of code outside `#[cfg(test)]`. A module and its own ancestors
//! may import each other (a folder's `mod.rs` is its face: it re-exports its children, they
//! use what it defines); every other pair of modules imports one way only.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use syn::visit::Visit;

/// Functions longer than this many lines are listed.
pub const LONG_FUNCTION: usize = 80;

/// Which layers each layer may import. [`BELOW_ALL`] may be imported by every layer and
/// import none; the binary's `main`, its `cli` and the crate root see everything.
const LAYERS: &[(&str, &[&str])] = &[
    ("inspect", &[]),
    ("schema", &[]),
    ("offline", &["schema"]),
    ("live", &["inspect", "schema", "offline"]),
    ("tools", &["inspect", "live", "schema", "offline"]),
];

/// Modules at the bottom: they import nothing of the crate.
const BELOW_ALL: &[&str] = &["text", "clock"];

#[derive(Debug, Default)]
pub struct Report {
    /// Module → the modules it imports.
    pub imports: BTreeMap<String, BTreeSet<String>>,
    /// Groups of modules that import each other, directly or through others.
    pub cycles: Vec<Vec<String>>,
    /// `(importer, imported)` pairs the layer rule forbids.
    pub violations: Vec<(String, String)>,
    /// `(lines, module, function)` of the functions over [`LONG_FUNCTION`] lines, longest first.
    pub long_functions: Vec<(usize, String, String)>,
}

pub fn run() -> Result<()> {
    let report = analyse(&crate::workspace_root().join("tracer/src"))?;
    for (module, imports) in &report.imports {
        let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!("{module} -> {}", imports.join(" "));
    }
    println!();
    println!(
        "functions over {LONG_FUNCTION} lines: {}",
        report.long_functions.len()
    );
    for (lines, module, function) in &report.long_functions {
        println!("  {lines:4}  {module}::{function}");
    }
    for cycle in &report.cycles {
        println!("cycle: {}", cycle.join(" <-> "));
    }
    for (from, to) in &report.violations {
        println!("layer rule broken: {from} imports {to}");
    }
    if !report.cycles.is_empty() || !report.violations.is_empty() {
        bail!(
            "{} import cycles, {} imports across the layer rule",
            report.cycles.len(),
            report.violations.len()
        );
    }
    println!("no import cycle; every import keeps the layer rule");
    Ok(())
}

/// The report for the crate whose sources are under `src`.
pub fn analyse(src: &Path) -> Result<Report> {
    let mut files = Vec::new();
    collect(src, src, &mut files)?;
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut report = Report::default();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).with_context(|| format!("{path:?}"))?;
        let file = syn::parse_file(&text).with_context(|| format!("parsing {path:?}"))?;
        let mut visitor = Visitor {
            module,
            modules: &modules,
            imports: BTreeSet::new(),
            functions: Vec::new(),
        };
        visitor.visit_file(&file);
        let imports = visitor
            .imports
            .into_iter()
            .filter(|to| to != module && !is_ancestor(to, module) && !is_ancestor(module, to))
            .collect();
        report.imports.insert(module.clone(), imports);
        report.long_functions.extend(
            visitor
                .functions
                .into_iter()
                .filter(|(lines, _)| *lines > LONG_FUNCTION)
                .map(|(lines, name)| (lines, module.clone(), name)),
        );
    }
    report.long_functions.sort_by(|a, b| b.cmp(a));
    report.cycles = cycles(&report.imports);
    for (from, imports) in &report.imports {
        for to in imports {
            if !allowed(layer(from), layer(to)) {
                report.violations.push((from.clone(), to.clone()));
            }
        }
    }
    Ok(report)
}

/// `(module path, file)` of every `.rs` file under `dir`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root)?.with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.push((parts.join("::"), path));
        }
    }
    Ok(())
}

/// `ancestor` is `module`'s parent, grandparent, … (the crate root is everyone's).
fn is_ancestor(ancestor: &str, module: &str) -> bool {
    ancestor.is_empty() || module.starts_with(&format!("{ancestor}::"))
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

fn allowed(from: &str, to: &str) -> bool {
    if BELOW_ALL.contains(&from) {
        return false;
    }
    if from == to || BELOW_ALL.contains(&to) {
        return true;
    }
    match LAYERS.iter().find(|(layer, _)| *layer == from) {
        Some((_, may)) => may.contains(&to),
        // The crate root and the binary.
        None => true,
    }
}

/// Strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        imports: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, module: &'a str) {
            let n = self.index.len();
            self.index.insert(module, n);
            self.low.insert(module, n);
            self.stack.push(module);
            self.on_stack.insert(module);
            for next in self.imports.get(module).into_iter().flatten() {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[module].min(self.low[next.as_str()]);
                    self.low.insert(module, low);
                } else if self.on_stack.contains(next.as_str()) {
                    let low = self.low[module].min(self.index[next.as_str()]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut group = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    group.push(top.to_string());
                    if top == module {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for module in imports.keys() {
        if !walk.index.contains_key(module.as_str()) {
            walk.visit(module);
        }
    }
    walk.out
}

struct Visitor<'a> {
    module: &'a str,
    modules: &'a BTreeSet<String>,
    imports: BTreeSet<String>,
    functions: Vec<(usize, String)>,
}

impl Visitor<'_> {
    /// The module a path (its segments) names, if it starts inside this crate.
    fn resolve(&self, segments: &[String]) -> Option<String> {
        let here: Vec<&str> = self.module.split("::").filter(|s| !s.is_empty()).collect();
        let (mut base, rest): (Vec<&str>, &[String]) = match segments.first()?.as_str() {
            "crate" | "tracer" => (Vec::new(), &segments[1..]),
            "self" => (here.clone(), &segments[1..]),
            "super" => {
                let mut base = here.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            // A child module named relatively (`use child::Item`).
            first => {
                let mut child = here.clone();
                child.push(first);
                if !self.modules.contains(&child.join("::")) {
                    return None;
                }
                (here.clone(), segments)
            }
        };
        let mut found = None;
        for segment in rest {
            base.push(segment);
            let path = base.join("::");
            if self.modules.contains(&path) {
                found = Some(path);
            } else {
                break;
            }
        }
        found
    }

    fn import(&mut self, segments: Vec<String>) {
        if let Some(module) = self.resolve(&segments) {
            self.imports.insert(module);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                path.push(n.ident.to_string());
                self.import(path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                self.import(path);
            }
            syn::UseTree::Glob(_) => self.import(prefix.clone()),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }

    fn function(&mut self, name: &syn::Ident, block: &syn::Block) {
        let lines = block.brace_token.span.close().end().line - name.span().start().line + 1;
        self.functions.push((lines, name.to_string()));
    }
}

/// `#[cfg(test)]` or `#[test]`: code the crate's build leaves out.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

impl<'ast> Visit<'ast> for Visitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 && matches!(segments[0].as_str(), "crate" | "super" | "tracer") {
            self.import(segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.function(&f.sig.ident, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            self.function(&f.sig.ident, &f.block);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_loop_through_three_modules_is_one_cycle() {
        let found = cycles(&imports(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &["a"]),
        ]));
        assert_eq!(found, vec![vec!["a", "b", "c"]]);
        assert!(cycles(&imports(&[("a", &["b"]), ("b", &[])])).is_empty());
    }

    #[test]
    fn layers_import_downward_only() {
        assert!(allowed("live", "inspect"));
        assert!(allowed("offline", "schema"));
        assert!(!allowed("offline", "live"));
        assert!(!allowed("schema", "live"));
        assert!(!allowed("inspect", "schema"));
        assert!(allowed("main", "live"));
        assert!(allowed("inspect", "text") && allowed("live", "clock"));
        assert!(!allowed("clock", "live") && !allowed("text", "inspect"));
    }

    /// The tracer crate as it is: no cycle, every import downward, no long function.
    #[test]
    fn the_tracer_crate_keeps_its_layers_and_short_functions() {
        let report = analyse(&crate::workspace_root().join("tracer/src")).unwrap();
        assert!(report.imports.len() > 40, "{:?}", report.imports.keys());
        assert!(report.cycles.is_empty(), "{:?}", report.cycles);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert!(
            report.long_functions.is_empty(),
            "{:?}",
            report.long_functions
        );
    }
}
