// The dashboard's only script (hand-written, no library): sortable tables, a quick row
// filter, and the tooltip of chart points and lineage nodes. Pages work without it.
"use strict";

function cellKey(row, column, numeric) {
  const cell = row.cells[column];
  if (!cell) return numeric ? NaN : "";
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  return numeric ? (raw === "" ? NaN : Number(raw)) : raw.toLowerCase();
}

function sortTable(table, header) {
  const column = header.cellIndex;
  const numeric = header.dataset.type === "number";
  const ascending = !header.classList.contains("sorted-asc");
  for (const th of header.parentNode.cells) th.classList.remove("sorted-asc", "sorted-desc");
  header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellKey(a, column, numeric), y = cellKey(b, column, numeric);
    // Missing values last, whichever the direction (as `ckptfs find --sort`).
    if (numeric && Number.isNaN(x) !== Number.isNaN(y)) return Number.isNaN(x) ? 1 : -1;
    const order = x < y ? -1 : x > y ? 1 : 0;
    return ascending ? order : -order;
  });
  body.append(...rows);
}

function filterRows(input) {
  const table = document.getElementById(input.dataset.table);
  const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
  for (const row of table.tBodies[0].rows) {
    const text = row.textContent.toLowerCase();
    row.hidden = !words.every((w) => text.includes(w));
  }
}

// A chart point carries its run, version, step and value; the chart its metric.
function pointTip(point) {
  const chart = point.closest("svg.metric-chart");
  const where = point.dataset.step ? `${chart.dataset.xLabel} ${point.dataset.step} · ` : "";
  return `${point.dataset.run}/${point.dataset.version} · ${where}${chart.dataset.metric} ${point.dataset.value}`;
}

function openPoint(point) {
  const chart = point.closest("svg.metric-chart");
  if (!chart.dataset.base) return;  // a chart of something other than versions
  const parts = [point.dataset.run, point.dataset.version];
  window.location.href = chart.dataset.base + "/" + parts.map(encodeURIComponent).join("/");
}

function showTip(event) {
  const tip = document.getElementById("tooltip");
  const mark = event.target;
  const text = mark.classList.contains("point") ? pointTip(mark) : mark.dataset.tip;
  if (!tip || !text) return;
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = event.clientX + 12 + "px";
  tip.style.top = event.clientY + 12 + "px";
}

function hideTip() {
  const tip = document.getElementById("tooltip");
  if (tip) tip.hidden = true;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    for (const th of table.tHead ? table.tHead.rows[0].cells : []) {
      th.addEventListener("click", () => sortTable(table, th));
    }
  }
  for (const input of document.querySelectorAll("input.table-filter")) {
    input.addEventListener("input", () => filterRows(input));
  }
  // One listener per chart or graph, not per mark: a run may have 10,000 points.
  for (const area of document.querySelectorAll("svg")) {
    area.addEventListener("mousemove", (event) => {
      if (event.target.classList.contains("point") || event.target.dataset.tip) showTip(event);
      else hideTip();
    });
    area.addEventListener("mouseleave", hideTip);
    area.addEventListener("click", (event) => {
      if (event.target.classList.contains("point")) openPoint(event.target);
    });
  }
});
