// The console's shell: sign-in, the role, and a hash router (#/calls, #/call/<id>, #/live, #/latency).
import { Unauthorized, forget, getJson, setToken, takeTokenFromUrl, token } from "./api.js";
import { showCalls } from "./calls.js";
import { showCall } from "./call.js";
import { showLive } from "./live.js";
import { showLatency } from "./latency.js";

const view = document.getElementById("view");
const login = document.getElementById("login");
const state = { role: null, leave: null };
window.vpConsole = state; // for tests and curious operators: the role and the current view

function signIn(message = "") {
  forget();
  state.role = null;
  view.replaceChildren();
  login.hidden = false;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = message;
}

login.addEventListener("submit", async (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  await start();
});

document.getElementById("logout").addEventListener("click", () => signIn());

async function route() {
  if (state.leave) state.leave();
  state.leave = null;
  const hash = location.hash || "#/calls";
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (parts[0] === "call" ? "calls" : parts[0]));
  }
  view.dataset.view = parts[0] || "calls";
  view.dataset.ready = "";
  try {
    if (parts[0] === "call" && parts[1]) state.leave = await showCall(view, decodeURIComponent(parts[1]), state);
    else if (parts[0] === "live") state.leave = await showLive(view, state);
    else if (parts[0] === "latency") state.leave = await showLatency(view, new URLSearchParams(query), state);
    else state.leave = await showCalls(view, new URLSearchParams(query), state);
    view.dataset.ready = "1";
  } catch (error) {
    if (error instanceof Unauthorized) signIn(error.message);
    else view.replaceChildren(Object.assign(document.createElement("p"), { className: "error", textContent: String(error) }));
  }
}

async function start() {
  if (!token()) return signIn();
  let who;
  try {
    who = await getJson("/whoami");
  } catch (error) {
    return signIn(error.message);
  }
  if (who.error) return signIn(who.error);
  state.role = who.role;
  login.hidden = true;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent =
    who.role === "operator" ? "operator" : "read-only: no caller numbers, no transcripts, no recordings";
  await route();
}

window.addEventListener("hashchange", () => state.role && route());
takeTokenFromUrl();
start();
