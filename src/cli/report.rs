//! Self-contained HTML reports (`probe --html`, `stats --html`): one file, no network, opens in
//! any browser. The data goes into the page as JSON; a short script draws each chart as SVG
//! (every point a `circle.point`, every bar a `rect.bar`, each with `data-series`, `data-label`
//! and `data-value`, which is how the tests find them in a headless browser). Tables are plain
//! HTML, so the numbers read without the script.

use serde::Serialize;

/// One line (or group of bars) of a chart: a value per label, `None` where there is none.
#[derive(Serialize, Clone, Debug)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub dashed: bool,
}

/// A chart over categorical x positions (`labels`), as lines with points or as bars.
#[derive(Serialize, Clone, Debug)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub x_title: String,
    pub y_title: String,
    pub labels: Vec<String>,
    pub series: Vec<Series>,
    pub bars: bool,
}

pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// JSON that can sit inside a `<script>` element (no `</script>` can end it early).
fn script_json(v: &serde_json::Value) -> String {
    v.to_string().replace("</", "<\\/").replace("<!--", "<\\!--")
}

/// The whole page: title, an introduction, the charts, the tables; `data` is embedded whole
/// (`<script id="data">`) for whoever wants the numbers.
pub fn page(title: &str, intro: &str, charts: &[Chart], tables: &[Table], data: &serde_json::Value) -> String {
    let mut body = format!("<h1>{}</h1>\n<p>{}</p>\n", escape(title), escape(intro));
    for c in charts {
        body += &format!("<figure><figcaption>{}</figcaption><div class=\"chart\" id=\"chart-{}\"></div></figure>\n", escape(&c.title), escape(&c.id));
    }
    for t in tables {
        body += "<table>\n<tr>";
        for h in &t.head {
            body += &format!("<th>{}</th>", escape(h));
        }
        body += "</tr>\n";
        for r in &t.rows {
            body += "<tr>";
            for cell in r {
                body += &format!("<td>{}</td>", escape(cell));
            }
            body += "</tr>\n";
        }
        body += "</table>\n";
    }
    let charts_json = serde_json::to_value(charts).unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\
         <script type=\"application/json\" id=\"charts\">{charts}</script>\n<script type=\"application/json\" id=\"data\">{data}</script>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>\n",
        title = escape(title),
        charts = script_json(&charts_json),
        data = script_json(data),
    )
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}\
figure{margin:1em 0}figcaption{font-weight:bold}svg text{font-size:11px}.legend{font-size:12px}";

/// Draws every chart of `#charts` as SVG into `#chart-<id>`.
const SCRIPT: &str = r##"
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
  function el(name, attrs, parent, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function draw(c) {
    var W = 760, H = 340, L = 60, R = 20, T = 20, B = 70;
    var host = document.getElementById("chart-" + c.id);
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "plot"}, host);
    var max = 0;
    c.series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v > max) max = v; }); });
    if (max <= 0) max = 1;
    max *= 1.1;
    var n = c.labels.length, band = (W - L - R) / Math.max(n, 1);
    function x(i) { return L + band * (i + 0.5); }
    function y(v) { return T + (H - T - B) * (1 - v / max); }
    el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#444"}, svg);
    el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#444"}, svg);
    for (var t = 0; t <= 4; t++) {
      var v = max * t / 4;
      el("line", {x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: "#eee"}, svg);
      el("text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, svg, v >= 100 ? v.toFixed(0) : v.toPrecision(3));
    }
    var every = Math.max(1, Math.ceil(n / 20));
    c.labels.forEach(function (lab, i) {
      if (i % every) return;
      el("text", {x: x(i), y: H - B + 14, "text-anchor": "end", transform: "rotate(-35 " + x(i) + " " + (H - B + 14) + ")"}, svg, lab);
    });
    el("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, svg, c.x_title);
    el("text", {x: 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (T + H - B) / 2 + ")"}, svg, c.y_title);
    c.series.forEach(function (s, k) {
      var color = COLORS[k % COLORS.length];
      if (c.bars) {
        var bw = band * 0.8 / c.series.length;
        s.values.forEach(function (v, i) {
          if (v === null) return;
          var r = el("rect", {x: L + band * i + band * 0.1 + bw * k, y: y(v), width: bw, height: H - B - y(v), fill: color, "class": "bar",
                              "data-series": s.name, "data-label": c.labels[i], "data-value": v}, svg);
          el("title", {}, r, s.name + " " + c.labels[i] + ": " + v);
        });
      } else {
        var pts = [];
        s.values.forEach(function (v, i) { if (v !== null) pts.push(x(i) + "," + y(v)); });
        el("polyline", {points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "6 4" : "none"}, svg);
        s.values.forEach(function (v, i) {
          if (v === null) return;
          var p = el("circle", {cx: x(i), cy: y(v), r: 4, fill: color, "class": "point",
                                "data-series": s.name, "data-label": c.labels[i], "data-value": v}, svg);
          el("title", {}, p, s.name + " " + c.labels[i] + ": " + v);
        });
      }
      el("rect", {x: L + 10, y: T + 4 + 16 * k, width: 12, height: 4, fill: color}, svg);
      el("text", {x: L + 28, y: T + 10 + 16 * k, "class": "legend"}, svg, s.name);
    });
  }
  JSON.parse(document.getElementById("charts").textContent).forEach(draw);
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_data_cannot_break_out_of_the_page() {
        let c = Chart {
            id: "c".into(),
            title: "<b>t</b>".into(),
            x_title: "x".into(),
            y_title: "y".into(),
            labels: vec!["</script><script>alert(1)</script>".into()],
            series: vec![Series { name: "s".into(), values: vec![Some(1.0)], dashed: false }],
            bars: false,
        };
        let t = Table { head: vec!["a&b".into()], rows: vec![vec!["<i>".into()]] };
        let html = page("<title>", "intro <x>", &[c], &[t], &serde_json::json!({"k": "</script>"}));
        // The only script end tags are the page's own three.
        assert_eq!(html.matches("</script>").count(), 3, "{html}");
        assert!(html.contains("&lt;b&gt;t&lt;/b&gt;") && html.contains("a&amp;b") && html.contains("&lt;i&gt;") && html.contains("intro &lt;x&gt;"));
    }
}
