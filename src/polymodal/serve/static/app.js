// The polymodal page: plain JavaScript, no build step. Talks to the same server's JSON API.
"use strict";

const $ = (id) => document.getElementById(id);

// The image the side panels work on: an uploaded file, or the key of an indexed result.
let current = null; // {file: File} | {key: string}
let health = null;

class ApiError extends Error {}

async function post(path, form, headers = {}) {
  let response;
  try {
    response = await fetch(path, { method: "POST", body: form, headers });
  } catch (error) {
    throw new ApiError("The server is unreachable. Is `polymodal serve` still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(detail);
  }
  return body;
}

function imageForm() {
  const form = new FormData();
  if (current.file) form.append("image", current.file);
  else form.append("key", current.key);
  return form;
}

// Runs `work` with `button` showing a busy state; errors land in `message` (an element with role=status).
async function busy(button, message, work) {
  const label = button.textContent;
  button.disabled = true;
  button.classList.add("loading");
  button.setAttribute("aria-busy", "true");
  message.textContent = "";
  message.classList.remove("error-text");
  try {
    await work();
  } catch (error) {
    message.textContent = error instanceof ApiError ? error.message : `Something went wrong: ${error.message}`;
    message.classList.add("error-text");
  } finally {
    button.textContent = label;
    button.classList.remove("loading");
    button.removeAttribute("aria-busy");
    button.disabled = false;
    refreshButtons(); // the side panels' buttons depend on the chosen image and the configured models
  }
}

function shortName(key) {
  const parts = key.split(/[\\/]/);
  return parts[parts.length - 1] || key;
}

// ---------------------------------------------------------------------------------------------- search

function showResults(body, note) {
  const grid = $("grid");
  grid.replaceChildren();
  $("results-note").textContent = note;
  if (!body.results.length) {
    $("results-note").textContent = "No results: the index is empty. Add images with “Add to index”.";
    return;
  }
  for (const hit of body.results) {
    const item = document.createElement("li");
    const card = document.createElement("button");
    card.type = "button";
    card.className = "tile";
    card.title = `${hit.title}\n${hit.key}\nscore ${hit.score.toFixed(4)} — click to ask about this image`;
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.title;
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "tile-caption";
    const name = document.createElement("span");
    name.className = "tile-name";
    name.textContent = hit.title;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(name, score);
    card.append(img, caption);
    card.addEventListener("click", () => pickKey(hit.key, hit.thumbnail, hit.title));
    item.append(card);
    grid.append(item);
  }
}

async function search(form, note, button) {
  const grid = $("grid");
  $("results-error").hidden = true;
  grid.setAttribute("aria-busy", "true");
  grid.classList.add("dim");
  form.append("k", $("k").value);
  try {
    await busy(button, $("results-error"), async () => {
      const started = performance.now();
      const body = await post("search", form);
      const took = Math.round(performance.now() - started);
      showResults(body, `${note} — ${body.results.length} of ${body.index_size} images, ${took} ms`);
    });
  } finally {
    grid.setAttribute("aria-busy", "false");
    grid.classList.remove("dim");
    $("results-error").hidden = !$("results-error").textContent;
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) {
    $("query").focus();
    return;
  }
  const form = new FormData();
  form.append("text", text);
  search(form, `“${text}”`, $("search-button"));
});

$("similar").addEventListener("click", () => {
  search(imageForm(), "Images like the chosen one", $("similar"));
});

// ---------------------------------------------------------------------------------------------- the image

function setPreview(src, name) {
  const preview = $("preview");
  preview.src = src;
  preview.alt = `chosen image: ${name}`;
  preview.hidden = false;
  $("drop").classList.add("has-image");
  $("image-name").textContent = name;
  for (const id of ["answers", "label-scores"]) $(id).replaceChildren();
  $("caption").hidden = true;
  for (const id of ["image-message", "vqa-message", "caption-message", "labels-message"]) $(id).textContent = "";
  refreshButtons();
}

function pickFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type)) {
    $("image-message").textContent = `${file.name}: not a PNG, JPEG, GIF or WebP image`;
    $("image-message").classList.add("error-text");
    return;
  }
  current = { file };
  setPreview(URL.createObjectURL(file), file.name);
}

function pickKey(key, thumbnail, title) {
  current = { key };
  setPreview(thumbnail, title || shortName(key));
  $("question").focus();
}

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("file").click();
  }
});
$("file").addEventListener("change", () => pickFile($("file").files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  pickFile(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) pickFile(file);
});

$("add").addEventListener("click", () => {
  busy($("add"), $("image-message"), async () => {
    if (!current.file) throw new ApiError("This image is already in the index.");
    const form = new FormData();
    form.append("images", current.file);
    const headers = {};
    if (health && health.write_requires_key) {
      const key = sessionStorage.getItem("polymodal-api-key") || window.prompt("API key for adding images:");
      if (!key) throw new ApiError("Adding images needs the server's API key.");
      sessionStorage.setItem("polymodal-api-key", key);
      headers.Authorization = `Bearer ${key}`;
    }
    try {
      const body = await post("index/add", form, headers);
      current = { key: body.added[0].key };
      $("image-message").textContent = `Added as ${body.added[0].key}; the index now holds ${body.index_size}.`;
      refreshStatus();
    } catch (error) {
      if (/API key/.test(error.message)) sessionStorage.removeItem("polymodal-api-key");
      throw error;
    }
  });
});

// ---------------------------------------------------------------------------------------------- the panels

function bars(list, rows, field) {
  list.replaceChildren();
  for (const row of rows) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = row[field];
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(1, Math.round(row.probability * 100))}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(row.probability * 100).toFixed(1)}%`;
    item.append(label, track, value);
    list.append(item);
  }
}

$("vqa-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) {
    $("question").focus();
    return;
  }
  busy($("ask"), $("vqa-message"), async () => {
    const form = imageForm();
    form.append("question", question);
    const body = await post("vqa", form);
    bars($("answers"), body.answers, "answer");
  });
});

$("describe").addEventListener("click", () => {
  busy($("describe"), $("caption-message"), async () => {
    const body = await post("caption", imageForm());
    $("caption").textContent = body.caption || "(an empty caption)";
    $("caption").hidden = false;
  });
});

$("labels-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("classify"), $("labels-message"), async () => {
    const form = imageForm();
    form.append("labels", $("labels").value);
    const body = await post("zero-shot", form);
    bars($("label-scores"), body.labels, "label");
  });
});

// ---------------------------------------------------------------------------------------------- state

function configured(task) {
  return Boolean(health && health.tasks[task]);
}

function refreshButtons() {
  const chosen = current !== null;
  const idle = (id) => !$(id).classList.contains("loading");
  $("similar").disabled = !chosen || !idle("similar");
  $("add").disabled = !chosen || !current.file || !idle("add");
  $("ask").disabled = !chosen || !configured("vqa") || !idle("ask");
  $("describe").disabled = !chosen || !configured("caption") || !idle("describe");
  $("classify").disabled = !chosen || !configured("zero_shot") || !idle("classify");
}

function markUnconfigured(card, flag) {
  if (card.classList.contains("off")) return;
  card.classList.add("off");
  card.parentElement.append(card); // the panels that work come first
  const note = document.createElement("p");
  note.className = "off-note";
  note.textContent = `Not configured: start the server with ${flag} DIR to use this panel.`;
  card.querySelector("h2").after(note);
  for (const input of card.querySelectorAll("input")) input.disabled = true;
}

async function refreshStatus() {
  try {
    const response = await fetch("healthz");
    health = await response.json();
  } catch (error) {
    $("status").textContent = "server unreachable";
    $("status").className = "status down";
    return;
  }
  const tasks = Object.entries(health.tasks).filter(([, on]) => on).map(([name]) => name.replace("_", "-"));
  $("status").textContent = `${health.index_size.toLocaleString()} images · ${tasks.join(" · ")}`;
  $("status").className = "status up";
  if (!health.tasks.vqa) markUnconfigured($("vqa-card"), "--vqa-checkpoint");
  if (!health.tasks.caption) markUnconfigured($("caption-card"), "--caption-checkpoint");
  refreshButtons();
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    event.preventDefault();
    $("query").focus();
  }
});

refreshStatus();
$("query").focus();
