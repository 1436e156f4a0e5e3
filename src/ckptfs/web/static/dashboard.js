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

function showTip(event) {
  const tip = document.getElementById("tooltip");
  const text = event.target.dataset ? event.target.dataset.tip : undefined;
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
  for (const mark of document.querySelectorAll("[data-tip]")) {
    mark.addEventListener("mousemove", showTip);
    mark.addEventListener("mouseleave", hideTip);
  }
});
