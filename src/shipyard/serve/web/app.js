/* The Shipyard page: try the served model, and watch it. Plain JavaScript modules, no
 * framework, no build step; everything goes through the server's public API, so the page
 * sees what a client sees. This file switches the two views (WAI-ARIA tabs) and starts them. */

import { $ } from "./common.js";
import { startMonitor } from "./monitor.js";
import { startTry } from "./try.js";

const tabs = [$("tab-try"), $("tab-monitoring")];

function selectTab(tab, focus) {
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute("aria-selected", String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  const hash = tab === tabs[1] ? "#monitoring" : "#try";
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

tabs.forEach((tab, index) => {
  tab.addEventListener("click", () => selectTab(tab, false));
  tab.addEventListener("keydown", (event) => {
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -index, End: tabs.length - 1 - index };
    if (!(event.key in moves)) return;
    event.preventDefault();
    selectTab(tabs[(index + moves[event.key] + tabs.length) % tabs.length], true);
  });
});
window.addEventListener("hashchange", () =>
  selectTab(location.hash === "#monitoring" ? tabs[1] : tabs[0], false)
);


selectTab(location.hash === "#monitoring" ? tabs[1] : tabs[0], false);
startTry();
startMonitor();
