//! `http.route`, kept low-cardinality: a configured template that matches the path, or
//! the path with its identifier-like segments (numbers, UUIDs, long hex) folded into
//! `{id}`. Never the raw path: that belongs on spans only (`url.path`).
use std::borrow::Cow;

#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Templates split into segments; `{...}` matches any one segment.
    templates: Vec<(String, Vec<String>)>,
    heuristic: bool,
}

impl Routes {
    pub fn new(templates: &[String], heuristic: bool) -> Self {
        let templates = templates.iter().map(|t| (t.clone(), t.split('/').map(str::to_owned).collect())).collect();
        Self { templates, heuristic }
    }

    /// Borrowed (no allocation) unless the heuristic replaced a segment.
    pub fn route<'a>(&'a self, path: &'a str) -> Option<Cow<'a, str>> {
        let matches = |template: &[String]| {
            let mut segments = path.split('/');
            template.iter().all(|t| segments.next().is_some_and(|s| (t.starts_with('{') && t.ends_with('}')) || t == s))
                && segments.next().is_none()
        };
        if let Some((template, _)) = self.templates.iter().find(|(_, parts)| matches(parts)) {
            return Some(Cow::Borrowed(template));
        }
        if !self.heuristic {
            return None;
        }
        if !path.split('/').any(is_identifier) {
            return Some(Cow::Borrowed(path));
        }
        let segments: Vec<&str> = path.split('/').map(|s| if is_identifier(s) { "{id}" } else { s }).collect();
        Some(Cow::Owned(segments.join("/")))
    }
}

/// A path segment that names one object rather than a kind of resource.
fn is_identifier(segment: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid =
        segment.len() == 36 && segment.split('-').map(str::len).eq([8, 4, 4, 4, 12]) && hex(&segment.replace('-', ""));
    let number = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let long_hex = segment.len() >= 16 && hex(segment);
    number || uuid || long_hex
}

#[cfg(test)]
mod tests {
    use super::Routes;

    #[test]
    fn templates_win_then_identifiers_fold() {
        let routes = Routes::new(&["/users/{user}/orders".into()], true);
        assert_eq!(routes.route("/users/42/orders").as_deref(), Some("/users/{user}/orders"));
        assert_eq!(routes.route("/items/42").as_deref(), Some("/items/{id}"));
        assert_eq!(routes.route("/o/123e4567-e89b-12d3-a456-426614174000/x").as_deref(), Some("/o/{id}/x"));
        assert_eq!(routes.route("/blob/0123456789abcdef0123").as_deref(), Some("/blob/{id}"));
        assert_eq!(routes.route("/static/app.js").as_deref(), Some("/static/app.js"));
        assert_eq!(routes.route("/").as_deref(), Some("/"));
        assert_eq!(Routes::new(&[], false).route("/items/42"), None);
    }
}
