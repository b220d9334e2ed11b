// The dashboard (api/ui.py says where it lives and how data flows). Plain ES modules, no build step.
// Every value from the API reaches the page through textContent or an attribute (el() below), never as HTML.

const ROOT = document.body.dataset.api || "";
const HOME = document.body.dataset.home || "/ui/";
const ROLE_HEADER = "X-Movierec-Role"; // api/auth.py ROLE_HEADER: the role of the key an answer was given to
const ROLES = ["reader", "writer", "admin", "operator"]; // shared/infra/apikeys.py ROLES, each allowed the ones before
const KEY_STORE = "movierec.apiKey";
const LAST_ANSWER = "movierec.lastAnswer";
const PIPELINE_STAGES = ["ingest", "mine", "encode", "train", "index"];
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const ACTIVE = new Set(STATUSES.slice(0, 2));

// -- small helpers -----------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 4) {
  return typeof value === "number" ? value.toFixed(digits) : value === null || value === undefined ? "–" : String(value);
}

function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function section(title, ...children) {
  return el("section", {}, el("h2", { text: title }), ...children);
}

function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows),
  );
}

function showError(container, error) {
  container.replaceChildren(el("p", { class: "error", role: "alert", text: error.message || String(error) }));
}

// -- the API, with the key asked for on the first 401 ------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let keyPrompt = null;

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = reason || "";
  keyPrompt = new Promise((resolve) => {
    form.addEventListener(
      "submit",
      () => {
        sessionStorage.setItem(KEY_STORE, input.value.trim());
        input.value = "";
        keyPrompt = null;
        resolve();
      },
      { once: true },
    );
  });
  if (!dialog.open) dialog.showModal();
  return keyPrompt;
}

async function api(path, { method = "GET", body, query } = {}) {
  const url = new URL(ROOT + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) url.searchParams.set(name, value);
  for (;;) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      await askForKey(key ? "That key was refused." : "");
      continue;
    }
    setConnection(true);
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code, error.message || `HTTP ${response.status}`, error.details);
    }
    return { status: response.status, data, role: response.headers.get(ROLE_HEADER) };
  }
}

function setConnection(ok, message) {
  const node = document.getElementById("connection");
  node.textContent = ok ? "" : message || "the API does not answer";
  node.className = ok ? "muted" : "error";
}

// Whether a key of `role` may use a route that needs `needed` (no role: the API has no keys, and is open). Only
// what a page offers follows it; the API refuses what the role may not do whatever the page shows.
function allows(role, needed) {
  return !role || ROLES.indexOf(role) >= ROLES.indexOf(needed);
}

// Run `tick` now and every `ms` until the page goes or `tick` answers false; a failure is shown and retried,
// never fatal.
function every(ms, tick) {
  const run = async () => {
    try {
      if ((await tick()) === false) return;
    } catch (error) {
      if (error instanceof ApiError) setConnection(true);
      else setConnection(false, `the API does not answer (${error.message})`);
    }
    setTimeout(run, ms);
  };
  run();
}

async function waitForJob(id, onProgress) {
  for (;;) {
    const { data: job } = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    if (onProgress) onProgress(job);
    if (!ACTIVE.has(job.status)) return job;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// -- overview ----------------------------------------------------------------------------------------------
function evaluationTable(evaluation) {
  const k = evaluation.protocol ? evaluation.protocol.k : 10;
  const headers = ["recommender", "kind", `Recall@${k}`, `NDCG@${k}`, `HR@${k}`, `cov@${k}`, "cold rec", "seconds"];
  const rows = evaluation.rows.map((row) =>
    el(
      "tr",
      { class: (row.family || row.name) === evaluation.best ? "best" : null },
      el("td", { text: row.name }),
      el("td", { text: row.kind }),
      row.skipped
        ? el("td", { colspan: 6, class: "muted", text: `skipped: ${row.skipped}` })
        : [
            el("td", { class: "num", text: fmt(row.recall) }),
            el("td", { class: "num", text: fmt(row.ndcg) }),
            el("td", { class: "num", text: fmt(row.hr, 3) }),
            el("td", { class: "num", text: fmt(row.coverage) }),
            el("td", { class: "num", text: fmt(row.cold_recall) }),
            el("td", { class: "num", text: fmt(row.seconds, 1) }),
          ],
    ),
  );
  const caption = `${(evaluation.users || 0).toLocaleString()} users evaluated on ${evaluation.dataset}` +
    (evaluation.best ? `; default recipe (chosen on validation): ${evaluation.best}` : "") +
    (evaluation.verdict ? `. ${evaluation.verdict}` : "");
  return el("div", {}, el("p", { class: "muted", text: caption }), table(headers, rows, { class: "evaluation" }));
}

function modelSummary(model) {
  const metrics = model.metrics || {};
  return el(
    "dl",
    { class: "facts" },
    el("dt", { text: "version" }), el("dd", { text: model.version }),
    el("dt", { text: "dataset" }), el("dd", { text: model.dataset }),
    el("dt", { text: "encoder" }), el("dd", { text: (model.encoder && model.encoder.model) || model.encoder || "–" }),
    el("dt", { text: "test AUC before → after" }),
    el("dd", { text: `${fmt(metrics.test_auc_before)} → ${fmt(metrics.test_auc_after)}` }),
    el("dt", { text: "created" }), el("dd", { text: model.created_at || "–" }),
  );
}

function renderOverview(main) {
  const queues = el("div");
  const jobs = el("div", { class: "tiles" });
  const model = el("div");
  const evaluation = el("div");
  const tenant = el("p", { class: "muted", id: "tenant" });
  const tenants = el("div", { id: "tenants" });
  main.replaceChildren(
    tenant,
    el("div", { class: "grid" }, section("Queues", queues), section("Jobs", jobs)),
    section("Active model", model),
    section("Evaluation", evaluation),
    tenants,
  );
  every(2000, async () => {
    const { data } = await api("/v1/system");
    // Every figure is the key's tenant's; an operator's key also gets every tenant's row.
    tenant.replaceChildren(el("span", { text: "Tenant: " }), el("strong", { text: data.tenant }));
    tenants.replaceChildren(
      ...(data.tenants
        ? [
            section(
              "Tenants",
              table(
                ["tenant", "queued", "running", "failed", "datasets", "models", "active model"],
                data.tenants.map((t) =>
                  el(
                    "tr",
                    { "data-tenant": t.tenant },
                    el("td", { text: t.tenant }),
                    el("td", { class: "num", text: t.jobs.queued }),
                    el("td", { class: "num", text: t.jobs.running }),
                    el("td", { class: "num", text: t.jobs.failed }),
                    el("td", { class: "num", text: t.datasets }),
                    el("td", { class: "num", text: t.models }),
                    el("td", { text: t.active_model || "–" }),
                  ),
                ),
              ),
            ),
          ]
        : []),
    );
    queues.replaceChildren(
      table(
        ["queue", "waiting", "live workers"],
        data.queues.map((q) =>
          el(
            "tr",
            { "data-queue": q.name },
            el("td", { text: q.name }),
            el("td", { class: "num", text: q.depth }),
            el("td", { class: q.workers ? "num" : "num error", text: q.workers }),
          ),
        ),
      ),
    );
    jobs.replaceChildren(
      ...STATUSES.map((status) => [status, data.jobs[status]]).map(([status, n]) =>
        el("div", { class: `tile ${status}`, "data-status": status }, el("strong", { text: n }), el("span", { text: status })),
      ),
      el("div", { class: "tile" }, el("strong", { text: data.datasets }), el("span", { text: "datasets" })),
      el("div", { class: "tile" }, el("strong", { text: data.models }), el("span", { text: "models" })),
    );
    model.replaceChildren(data.active_model ? modelSummary(data.active_model) : el("p", { class: "muted",
      text: "No model is active yet: run a pipeline from the Jobs page." }));
    const latest = data.latest_evaluation;
    evaluation.replaceChildren(
      latest ? evaluationTable(latest.table) : el("p", { class: "muted",
        text: "No evaluation yet: run one from the Jobs page (every recipe against the baselines)." }),
    );
  });
}

// -- jobs --------------------------------------------------------------------------------------------------
const seen = new Map(); // job id -> first (time, progress) this page saw, for the ETA

function eta(job) {
  if (job.status !== "running" || !(job.progress > 0)) return "–";
  const now = Date.now() / 1000;
  const first = seen.get(job.id);
  if (!first) {
    seen.set(job.id, { t: now, p: job.progress });
    const started = Date.parse(job.started_at || job.created_at) / 1000;
    return duration(((now - started) * (1 - job.progress)) / job.progress);
  }
  const rate = (job.progress - first.p) / (now - first.t);
  if (!(rate > 0)) return "–";
  return duration((1 - job.progress) / rate);
}

function stages(job) {
  if (job.kind !== "pipeline") return job.stage ? el("span", { class: "stage", text: job.stage }) : "–";
  const at = PIPELINE_STAGES.indexOf(job.stage);
  const done = job.status === "succeeded";
  return el(
    "ol",
    { class: "stages" },
    PIPELINE_STAGES.map((name, i) =>
      el("li", { class: done || i < at ? "done" : i === at ? (ACTIVE.has(job.status) ? "now" : job.status) : null,
        text: name }),
    ),
  );
}

function jobRow(job) {
  const progress = Math.round(job.progress * 100);
  const cancel = ACTIVE.has(job.status)
    ? el("button", {
        class: "small",
        text: "Cancel",
        onclick: async (event) => {
          event.target.disabled = true;
          await api(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" }).catch(() => null);
        },
      })
    : null;
  return el(
    "tr",
    { "data-job": job.id, "data-kind": job.kind, "data-status": job.status },
    el("td", {}, el("code", { text: job.id.slice(0, 8), title: job.id })),
    el("td", { text: job.kind }),
    el("td", {}, el("span", { class: `badge ${job.status}`, text: job.status })),
    el(
      "td",
      { class: "progress-cell" },
      el("progress", { max: 100, value: progress, "aria-label": `${job.kind} progress` }),
      el("span", { class: "num", text: `${progress}%` }),
    ),
    el("td", {}, stages(job)),
    el("td", { class: "message" }, job.error ? el("span", { class: "error", text: `${job.error.code}: ${job.error.message}` })
      : (job.message || "")),
    el("td", { class: "num", text: eta(job) }),
    el("td", { class: "muted", text: (job.created_at || "").replace("T", " ").slice(0, 19) }),
    el("td", {}, cancel),
  );
}

function submitForm() {
  const status = el("p", { class: "muted", role: "status" });
  const source = el("input", { name: "source", required: true, value: "ml-latest-small", size: 28,
    "aria-label": "a MovieLens directory under the data root, or a dataset id" });
  const options = el("input", { name: "options", value: "{}", size: 40, "aria-label": "options as JSON",
    placeholder: '{"epochs": 10, "recipe": "hybrid"}' });
  const what = el("select", { name: "what", "aria-label": "what to run" },
    el("option", { value: "pipeline", text: "Pipeline (ingest → activate)" }),
    el("option", { value: "evaluate", text: "Evaluation (every recipe against the baselines)" }));
  const form = el(
    "form",
    { class: "inline", id: "submit-form" },
    what,
    el("label", {}, "on ", source),
    el("label", {}, "options ", options),
    el("button", { type: "submit", text: "Run" }),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let body;
    try {
      body = JSON.parse(options.value || "{}");
      if (typeof body !== "object" || body === null || Array.isArray(body)) throw new Error("options must be an object");
    } catch (error) {
      status.className = "error";
      status.textContent = `options: ${error.message}`;
      return;
    }
    const value = source.value.trim();
    body[/^ds-[0-9a-f]+$/.test(value) ? "dataset" : "path"] = value;
    const path = what.value === "pipeline" ? "/v1/pipelines" : "/v1/jobs/evaluate";
    try {
      const { data } = await api(path, { method: "POST", body });
      status.className = "muted";
      status.textContent = `queued ${data.kind} ${data.id}`;
    } catch (error) {
      status.className = "error";
      status.textContent = error.message;
    }
  });
  return el("div", {}, form, status);
}

function renderJobs(main) {
  const list = el("div");
  main.replaceChildren(section("Run", submitForm()), section("Jobs", list));
  every(1000, async () => {
    const { data } = await api("/v1/jobs", { query: { limit: 50 } });
    list.replaceChildren(
      data.jobs.length
        ? table(["id", "kind", "status", "progress", "stage", "message", "ETA", "created", ""], data.jobs.map(jobRow),
          { class: "jobs" })
        : el("p", { class: "muted", text: "No jobs yet." }),
    );
  });
}

function recipeOf(model) {
  const config = model.config || {};
  const triplets = String(model.triplets || "").split("/").pop();
  const encoder = (model.encoder && model.encoder.model) || "";
  return [config.architecture, config.epochs && `${config.epochs} epochs`, triplets, encoder.split("/").pop()]
    .filter(Boolean).join(" · ");
}

// -- models ------------------------------------------------------------------------------------------------
function renderModels(main) {
  const list = el("div");
  const status = el("p", { class: "muted", role: "status" });
  main.replaceChildren(section("Models", status, list));
  let previous = null;
  async function refresh() {
    const { data } = await api("/v1/models");
    const rows = data.models.map((model) => {
      const active = model.version === data.active;
      const metrics = model.metrics || {};
      const activate = el("button", {
        class: "small",
        text: previous === model.version ? "Roll back to this" : "Activate",
        disabled: active || !model.index,
        title: model.index ? null : "this version has no index yet",
        onclick: async () => {
          try {
            const { data: answer } = await api(`/v1/models/${encodeURIComponent(model.version)}/activate`,
              { method: "POST" });
            previous = answer.previous;
            status.textContent = `${answer.active} is active (was ${answer.previous || "none"})`;
          } catch (error) {
            status.textContent = error.message;
          }
          await refresh();
        },
      });
      return [
        el(
          "tr",
          { "data-model": model.version, class: active ? "active" : null },
          el("td", {}, el("code", { text: model.version }), active ? el("span", { class: "badge succeeded", text: "active" }) : null),
          el("td", {}, el("code", { text: model.dataset })),
          el("td", { text: recipeOf(model) }),
          el("td", { class: "num", text: fmt(metrics.test_auc_before) }),
          el("td", { class: "num", text: fmt(metrics.test_auc_after) }),
          el("td", { class: "muted", text: (model.created_at || "").replace("T", " ").slice(0, 19) }),
          el("td", {}, activate),
        ),
        model.evaluation
          ? el("tr", { class: "detail" }, el("td", { colspan: 7 },
              el("details", {}, el("summary", { text: "evaluation" }), evaluationTable(model.evaluation))))
          : null,
      ];
    });
    list.replaceChildren(
      rows.length
        ? table(["version", "dataset", "trained", "AUC before", "AUC after", "created", ""], rows, { class: "models" })
        : el("p", { class: "muted", text: "No model yet: run a pipeline from the Jobs page." }),
    );
  }
  refresh().catch((error) => showError(list, error));
}

// -- try it ------------------------------------------------------------------------------------------------
function chipList(name) {
  const chips = el("ul", { class: "chips", "data-list": name });
  return {
    node: chips,
    descriptors: new Map(), // movie id -> its descriptors, to mark those an answer shares with the examples
    ids: () => [...chips.children].map((li) => Number(li.dataset.movie)),
    add(movie) {
      if (this.ids().includes(movie.movie_id)) return;
      this.descriptors.set(movie.movie_id, movie.descriptors || []);
      const li = el("li", { "data-movie": movie.movie_id }, movie.title,
        el("button", { type: "button", class: "link", "aria-label": `remove ${movie.title}`, text: "×",
          onclick: () => li.remove() }));
      chips.append(li);
    },
  };
}

function titlePicker(liked, disliked) {
  const input = el("input", { type: "search", id: "title-search", placeholder: "type a title…", autocomplete: "off",
    "aria-label": "search titles" });
  const results = el("ul", { class: "suggestions", id: "suggestions" });
  let typed = 0;
  input.addEventListener("input", async () => {
    const q = input.value.trim();
    const mine = ++typed;
    if (q.length < 2) return results.replaceChildren();
    try {
      const { data } = await api("/v1/movies", { query: { q, limit: 8 } });
      if (mine !== typed) return; // a later keystroke's answer wins
      results.replaceChildren(
        ...data.movies.map((movie) =>
          el("li", { "data-movie": movie.movie_id }, el("span", { text: movie.title }),
            el("button", { type: "button", class: "small", text: "Like", onclick: () => liked.add(movie) }),
            el("button", { type: "button", class: "small", text: "Dislike", onclick: () => disliked.add(movie) })),
        ),
      );
    } catch (error) {
      results.replaceChildren(el("li", { class: "error", text: error.message }));
    }
  });
  return el("div", { class: "picker" }, input, results);
}

function explain(answer, examples = []) {
  const query = answer.query || {};
  const facts = [];
  const reason = {
    profile: "from this user's ratings (feedback included): movies near their rating-weighted profile",
    popular: "this user has no ratings yet: the most-rated movies",
    keywords: "movies whose learned descriptors are nearest to the keywords",
    examples: "movies near the liked ones and away from the disliked ones",
    similar: "the movie's nearest neighbours",
  }[answer.strategy];
  facts.push(el("p", {}, el("strong", { text: answer.strategy || "answer" }), reason ? ` — ${reason}` : "",
    ` (model ${answer.model})`));
  const pairs = (label, list) =>
    list && list.length
      ? el("p", { class: "descriptors" }, `${label}: `, list.map(([d, n]) => el("span", { class: "tag", text: `${d} ${n}` })))
      : null;
  facts.push(pairs("most common among these", answer.top_descriptors));
  facts.push(pairs("most common in the user's history", answer.history_top_descriptors));
  const anchor = new Set([...(query.keywords || []), ...(answer.history_top_descriptors || []).map(([d]) => d),
    ...examples].map((d) => String(d).toLowerCase()));
  const rows = answer.items.map((item, i) =>
    el(
      "tr",
      { "data-movie": item.movie_id },
      el("td", { class: "num", text: i + 1 }),
      el("td", { class: "title", text: item.title }),
      el("td", { class: "num", text: fmt(item.score, 3) }),
      el("td", {}, (item.descriptors || []).slice(0, 10).map((d) =>
        el("span", { class: anchor.has(String(d).toLowerCase()) || (item.shared_descriptors || []).includes(d)
          ? "tag match" : "tag", text: d }))),
    ),
  );
  return el("div", { class: "answer", id: "answer" }, facts,
    table(["#", "title", "score", "descriptors (those of the query, the liked movies or the history marked)"], rows,
      { class: "answer-items" }));
}

function renderTry(main) {
  const out = el("div", { id: "answer-area" });
  const k = el("input", { type: "number", min: 1, max: 100, value: 10, "aria-label": "how many", class: "narrow" });
  const liked = chipList("liked");
  const disliked = chipList("disliked");
  // The serve-time rules every query takes (README, "Serve-time rules"): empty fields are no rule.
  const yearMin = el("input", { type: "number", min: 1, max: 9999, id: "year-min", class: "narrow", "aria-label": "from year" });
  const yearMax = el("input", { type: "number", min: 1, max: 9999, id: "year-max", class: "narrow", "aria-label": "to year" });
  const diversity = el("input", { type: "number", min: 0, max: 1, step: 0.1, id: "diversity", class: "narrow",
    "aria-label": "diversity, 0 to 1" });
  const next = el("button", { type: "button", id: "next-page", text: "Next page", disabled: true });
  let last = null; // the last query asked and its answer's next_cursor: the next page is that query with it

  function rules() {
    const given = {};
    if (yearMin.value) given.year_min = Number(yearMin.value);
    if (yearMax.value) given.year_max = Number(yearMax.value);
    if (diversity.value && Number(diversity.value) > 0) given.diversity = Number(diversity.value);
    return given;
  }

  async function ask(body, examples = [], cursor = null) {
    out.replaceChildren(el("p", { class: "muted", text: "asking…" }));
    next.disabled = true;
    try {
      const query = cursor ? body : { ...body, ...rules(), k: Number(k.value) };
      let { status, data } = await api("/v1/recommendations", { method: "POST",
        body: cursor ? { ...query, cursor } : query, query: { wait: 10 } });
      if (status === 202) {
        const job = await waitForJob(data.id);
        if (job.status !== "succeeded") throw new Error((job.error && job.error.message) || job.status);
        ({ data } = await api(`/v1/jobs/${encodeURIComponent(job.id)}/result`));
      }
      sessionStorage.setItem(LAST_ANSWER, JSON.stringify({ model: data.model, movies: data.items.map((i) => i.movie_id) }));
      out.replaceChildren(explain(data, examples));
      last = data.next_cursor ? { query, examples, cursor: data.next_cursor } : null;
      next.disabled = !last;
    } catch (error) {
      showError(out, error);
    }
  }

  const user = el("input", { type: "number", min: 1, id: "user-id", "aria-label": "user id", value: 1 });
  const keywords = el("input", { id: "keywords", size: 30, value: "war, drama", "aria-label": "keywords, comma separated" });
  const byUser = el("form", { class: "inline" }, el("label", {}, "User id ", user), el("button", { text: "Recommend" }));
  byUser.addEventListener("submit", (e) => (e.preventDefault(), ask({ user_id: Number(user.value) })));
  const byWords = el("form", { class: "inline" }, el("label", {}, "Keywords ", keywords), el("button", { text: "Recommend" }));
  byWords.addEventListener("submit", (e) => {
    e.preventDefault();
    ask({ keywords: keywords.value.split(",").map((w) => w.trim()).filter(Boolean) });
  });
  const byExamples = el("form", { class: "stacked", id: "examples-form" },
    titlePicker(liked, disliked),
    el("div", { class: "grid" }, el("div", {}, el("h3", { text: "Liked" }), liked.node),
      el("div", {}, el("h3", { text: "Disliked" }), disliked.node)),
    el("button", { text: "Recommend from these", id: "ask-examples" }));
  byExamples.addEventListener("submit", (e) => {
    e.preventDefault();
    const ids = liked.ids();
    ask({ liked: ids, disliked: disliked.ids() }, ids.flatMap((id) => liked.descriptors.get(id) || []));
  });
  next.addEventListener("click", () => last && ask(last.query, last.examples, last.cursor));
  main.replaceChildren(
    section("Ask", el("p", {}, el("label", {}, "How many ", k), " ", el("label", {}, "Years ", yearMin), " to ",
      yearMax, " ", el("label", {}, "Diversity ", diversity)), byUser, byWords,
      el("h3", { text: "Movies you liked or disliked" }), byExamples),
    section("Answer", el("p", {}, next), out),
  );
}

// -- map ---------------------------------------------------------------------------------------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
  "#636363"];

function renderMap(main) {
  const status = el("p", { class: "muted", role: "status", text: "loading the active model's map…" });
  const canvas = el("canvas", { id: "map", width: 900, height: 600, "aria-label": "movie embedding map" });
  const tip = el("div", { class: "tip", hidden: true });
  const legend = el("ul", { class: "legend" });
  main.replaceChildren(section("Movies in 2-D", status, el("div", { class: "map-wrap" }, canvas, tip), legend));
  (async () => {
    const { data: system } = await api("/v1/system");
    if (!system.active_model) {
      status.textContent = "No model is active yet.";
      return;
    }
    const { data } = await api(`/v1/models/${encodeURIComponent(system.active_model.version)}/map`);
    const last = JSON.parse(sessionStorage.getItem(LAST_ANSWER) || "null");
    const highlighted = new Set(last && last.model === data.version ? last.movies : []);
    drawMap(canvas, tip, data, highlighted);
    const [a, b] = data.explained_variance || [];
    status.textContent = `${data.movies.movie_id.length.toLocaleString()} movies of model ${data.version}, ` +
      `${data.method.toUpperCase()} axes explaining ${fmt(a * 100, 1)}% and ${fmt(b * 100, 1)}% of the variance` +
      (highlighted.size ? `; ringed: the ${highlighted.size} movies of the last answer` : "");
    legend.replaceChildren(...data.genres.map((g, i) =>
      el("li", {}, el("span", { class: "swatch", "data-colour": i % PALETTE.length }), g)));
    for (const swatch of legend.querySelectorAll(".swatch")) swatch.style.background = PALETTE[swatch.dataset.colour];
  })().catch((error) => showError(status, error));
}

function drawMap(canvas, tip, data, highlighted) {
  const { movie_id: ids, x, y, genre, title } = data.movies;
  const ctx = canvas.getContext("2d");
  const pad = 12;
  const range = (v) => v.reduce(([lo, hi], value) => [Math.min(lo, value), Math.max(hi, value)], [Infinity, -Infinity]);
  const [minX, maxX] = range(x);
  const [minY, maxY] = range(y);
  const sx = (v) => pad + ((v - minX) / (maxX - minX || 1)) * (canvas.width - 2 * pad);
  const sy = (v) => canvas.height - pad - ((v - minY) / (maxY - minY || 1)) * (canvas.height - 2 * pad);
  const px = x.map(sx);
  const py = y.map(sy);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 0.55;
  for (let i = 0; i < ids.length; i++) {
    ctx.fillStyle = PALETTE[genre[i] % PALETTE.length];
    ctx.fillRect(px[i] - 1.5, py[i] - 1.5, 3, 3);
  }
  ctx.globalAlpha = 1;
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#000";
  for (let i = 0; i < ids.length; i++) {
    if (!highlighted.has(ids[i])) continue;
    ctx.beginPath();
    ctx.arc(px[i], py[i], 6, 0, 2 * Math.PI);
    ctx.stroke();
  }
  // Hover: the nearest movie within 8 px, found through a coarse grid of the points.
  const cell = 16;
  const grid = new Map();
  for (let i = 0; i < ids.length; i++) {
    const key = `${Math.floor(px[i] / cell)},${Math.floor(py[i] / cell)}`;
    if (!grid.has(key)) grid.set(key, []);
    grid.get(key).push(i);
  }
  canvas.addEventListener("mousemove", (event) => {
    const box = canvas.getBoundingClientRect();
    const mx = ((event.clientX - box.left) * canvas.width) / box.width;
    const my = ((event.clientY - box.top) * canvas.height) / box.height;
    let best = -1;
    let bestD = 64;
    for (let gx = Math.floor(mx / cell) - 1; gx <= Math.floor(mx / cell) + 1; gx++) {
      for (let gy = Math.floor(my / cell) - 1; gy <= Math.floor(my / cell) + 1; gy++) {
        for (const i of grid.get(`${gx},${gy}`) || []) {
          const d = (px[i] - mx) ** 2 + (py[i] - my) ** 2;
          if (d < bestD) [best, bestD] = [i, d];
        }
      }
    }
    tip.hidden = best < 0;
    if (best >= 0) {
      tip.textContent = `${title[best]} · ${data.genres[genre[best]]}`;
      tip.style.left = `${(px[best] * box.width) / canvas.width + 10}px`;
      tip.style.top = `${(py[best] * box.height) / canvas.height + 10}px`;
    }
  });
  canvas.addEventListener("mouseleave", () => (tip.hidden = true));
}

// -- experiments -------------------------------------------------------------------------------------------
// The SVG namespace, spelled from the page's own (XHTML's: ".../1999/xhtml"), so that this script names no URL at
// all (tests/api/test_ui.py looks for any).
const SVG = document.documentElement.namespaceURI.replace("1999/xhtml", "2000/svg");
const KIND_NAMES = { ab: "A/B test", interleave: "interleaving" };

// An SVG element: el() for the SVG namespace (attributes and text only, never markup).
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, String(value));
  }
  node.append(...children.flat(Infinity).filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

function experimentUrl(name) {
  return `${HOME}experiments/${encodeURIComponent(name)}`;
}

function percent(value, digits = 1) {
  return typeof value === "number" ? `${(value * 100).toFixed(digits)}%` : "–";
}

// A rate with its interval, "12.0% [8.1%, 15.9%]" (the report's level, 95%: the interval clustered by user).
function rate(r) {
  return r && typeof r.value === "number" ? `${percent(r.value)} [${percent(r.low)}, ${percent(r.high)}]` : "–";
}

function pValue(p) {
  return typeof p !== "number" ? "p –" : p < 0.001 ? "p < 0.001" : `p = ${p.toFixed(3)}`;
}

function signed(value) {
  return `${value < 0 ? "−" : "+"}${Math.abs(value * 100).toFixed(1)}`;
}

// A variant against the first: the difference in percentage points with its interval, the p-value and the verdict.
function versus(d) {
  if (!d) return "–";
  const verdict = !d.significant ? "a tie" : d.difference > 0 ? "significantly higher" : "significantly lower";
  const anytime = `always valid ${pValue(d.always_valid_p)}`;
  return `${signed(d.difference)} pp [${signed(d.low)}, ${signed(d.high)}] · ${pValue(d.p_value)} · ${verdict} · ${anytime}`;
}

function stateBadge(state) {
  return el("span", { class: `badge ${state}`, "data-state": state, text: state });
}

// Who is ahead and whether it counts: an A/B test's leader by CTR@k, an interleaving's preferred variant.
function verdictOf(report) {
  const level = `${Math.round((report.level || 0.95) * 100)}%`;
  const ahead = report.kind === "interleave" ? (report.interleaving || {}).preferred : report.leader;
  if (!ahead) return el("span", { class: "muted", text: "no preference yet" });
  const verb = report.kind === "interleave" ? "preferred" : "leads";
  return el(
    "span",
    { class: "verdict", "data-variant": ahead.variant, "data-significant": String(ahead.significant) },
    el("strong", { text: ahead.variant }), " ", el("code", { text: ahead.model }), ` ${verb}: `,
    ahead.significant ? el("span", { class: "badge succeeded", text: `significant at ${level}` })
      : el("span", { class: "muted", text: `not significant at ${level}, a tie so far` }),
    " ",
    el("span", { class: "muted", "data-always-valid": String(ahead.always_valid_significant),
                 text: ahead.always_valid_significant ? "(and by the always-valid test: promote can name it)"
                   : "(not yet by the always-valid test, which promote asks for)" }),
  );
}

function usersOf(report) {
  return report.kind === "interleave" ? (report.totals || {}).users || 0
    : (report.variants || []).reduce((sum, v) => sum + (v.users || 0), 0);
}

function renderExperiments(main) {
  const list = el("div");
  main.replaceChildren(section("Experiments", list));
  every(2000, async () => {
    const { data } = await api("/v1/experiments");
    const rows = data.experiments.map((x) =>
      el(
        "tr",
        { "data-experiment": x.name, "data-state": x.state },
        el("td", {}, el("a", { href: experimentUrl(x.name), text: x.name })),
        el("td", { text: KIND_NAMES[x.kind] || x.kind }),
        el("td", {}, stateBadge(x.state)),
        el("td", {}, x.variants.map((v) =>
          el("div", {}, el("strong", { text: v.name }), " ", el("code", { text: v.model }),
            x.kind === "ab" ? el("span", { class: "muted", text: ` ${percent(v.share, 0)}` }) : null))),
        el("td", { class: "num", text: usersOf(x).toLocaleString() }),
        el("td", {}, verdictOf(x)),
        el("td", { class: "muted", text: (x.created || "").replace("T", " ").slice(0, 19) }),
      ),
    );
    list.replaceChildren(
      rows.length
        ? table(["name", "kind", "state", "variants (models, shares)", "users", "ahead", "created"], rows,
          { class: "experiments" })
        : el("p", { class: "muted", text: "No experiment yet: an admin's POST /v1/experiments starts one (README, " +
            "\"What users did: attribution and experiments\")." }),
    );
  });
}

// The buttons an admin's key gets: each POSTs its action and shows the answer, or the API's refusal, in `status`.
function experimentActions(report, status, refresh) {
  const act = (label, path, query, attrs = {}) =>
    el("button", {
      type: "button",
      class: "small",
      text: label,
      "data-action": path,
      ...attrs,
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          const { data } = await api(`/v1/experiments/${encodeURIComponent(report.name)}/${path}`,
            { method: "POST", query });
          status.className = "muted";
          status.textContent = data.promoted && path === "promote"
            ? `promoted ${data.promoted.variant}: model ${data.promoted.model} is active; the experiment ended`
            : `${report.name} is ${data.state}`;
        } catch (error) {
          status.className = "error";
          status.textContent = error.message;
        }
        await refresh().catch(() => null); // the next tick shows what went wrong
      },
    });
  const buttons = [];
  if (report.state === "running") buttons.push(act("Pause", "pause"));
  if (report.state === "paused") buttons.push(act("Resume", "resume"));
  if (report.state !== "ended") buttons.push(act("End", "end"));
  if (!report.promoted) {
    buttons.push(act("Promote the winner", "promote", undefined, { title: "activate the variant that won significantly" }));
    for (const v of report.variants) {
      buttons.push(act(`Promote ${v.name}`, "promote", { variant: v.name },
        { "data-variant": v.name, title: `activate ${v.model} whatever the numbers say` }));
    }
  }
  return buttons.length ? el("div", { class: "actions" }, buttons) : null;
}

function experimentFacts(report) {
  const facts = [
    ["kind", `${KIND_NAMES[report.kind] || report.kind}, by ${report.unit}`],
    ["state", stateBadge(report.state)],
    ["ahead", verdictOf(report)],
    ["CTR@k's k", report.k],
    ["created", report.created],
    ["started", report.started],
    ["paused", report.paused],
    ["ended", report.ended],
    ["promoted", report.promoted &&
      `${report.promoted.variant} (model ${report.promoted.model}) at ${report.promoted.at}`],
  ];
  return el("dl", { class: "facts" }, facts.filter(([, value]) => value !== undefined && value !== null)
    .map(([term, value]) => [el("dt", { text: term }), el("dd", { "data-fact": term }, value)]));
}

function variantTable(report) {
  const first = report.variants[0].name;
  const vs = "vs_control";
  const rows = report.variants.map((v, i) =>
    el(
      "tr",
      { "data-variant": v.name },
      el("td", {}, el("strong", { text: v.name })),
      el("td", {}, el("code", { text: v.model })),
      el("td", { class: "num", text: percent(v.share, 0) }),
      el("td", { class: "num users", text: v.users }),
      el("td", { class: "num impressions", text: v.impressions }),
      el("td", { class: "num clicks", text: v.clicks }),
      el("td", { class: "num ctr", text: rate(v.ctr) }),
      el("td", { class: "num liked", text: rate(v.liked_rate) }),
      el("td", { class: "vs-ctr", text: i ? versus((v[vs] || {}).ctr) : "(the baseline)" }),
      el("td", { class: "vs-liked", text: i ? versus((v[vs] || {}).liked_rate) : "" }),
    ),
  );
  return table(["variant", "model", "share", "users", "impressions", "clicks", `CTR@${report.k}`,
    "liked per impression", `CTR@${report.k} vs ${first}`, `liked vs ${first}`], rows, { class: "variants" });
}

function interleavingFacts(report) {
  const totals = report.totals || {};
  const x = report.interleaving || {};
  const [a, b] = report.variants;
  const facts = [
    ["users", totals.users], ["impressions", totals.impressions], ["clicks", totals.clicks],
    [`CTR@${report.k}`, rate(totals.ctr)], ["liked per impression", rate(totals.liked_rate)],
    [`users preferring ${a.name}`, x.wins_a], [`users preferring ${b.name}`, x.wins_b], ["ties", x.ties],
    [`preference for ${b.name}`, typeof x.preference === "number" ? x.preference.toFixed(3) : "–"],
    ["sign test", `${pValue(x.p_value)} · ${x.significant ? "significant" : "a tie"} · always valid ${pValue(x.always_valid_p)}`],
    ["clicks credited", report.variants.map((v) => `${v.name}: ${(x.clicks || {})[v.name] || 0}`).join(", ")],
    ["preferred", verdictOf(report)],
  ];
  return el("dl", { class: "facts interleaving" },
    facts.map(([term, value]) => [el("dt", { text: term }), el("dd", { "data-fact": term }, value ?? "–")]));
}

// The cumulative series as lines: per variant its CTR (clicks / impressions so far) for an A/B test, per team
// the clicks credited so far for an interleaving. One <path class="series" data-variant=...> a variant.
function seriesLines(report) {
  const names = report.variants.map((v) => v.name);
  const interleave = report.kind === "interleave";
  return names.map((name) => ({
    name,
    points: report.series.points.flatMap((p) => {
      const t = Date.parse(p.t);
      if (interleave) return [{ t, y: (p.clicks || {})[name] || 0 }];
      const counts = p[name] || {};
      return counts.impressions ? [{ t, y: counts.clicks / counts.impressions }] : [];
    }),
  }));
}

const MARKED_POINTS = 100; // a line with more points than this is drawn without a dot at each
const TIME_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

// A step for axis ticks near a fifth of `span`: 1, 2 or 5 times a power of ten.
function niceStep(span) {
  const raw = span / 5 || 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

function drawSeries(report) {
  const W = 760, H = 300, left = 64, right = 32, top = 14, bottom = 48; // right: room for the last time label
  const interleave = report.kind === "interleave";
  const lines = seriesLines(report);
  const all = lines.flatMap((line) => line.points);
  const bucket = (report.series.bucket_s || 60) * 1000;
  let [t0, t1] = [Math.min(...all.map((p) => p.t)), Math.max(...all.map((p) => p.t))];
  if (t0 === t1) [t0, t1] = [t0 - bucket, t1 + bucket];
  const highest = Math.max(...all.map((p) => p.y), 0) * 1.1; // headroom above the highest point
  const step = niceStep(highest || (interleave ? 5 : 0.1));
  const yMax = Math.max(step, Math.ceil(highest / step) * step);
  const sx = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const sy = (y) => H - bottom - (y / yMax) * (H - top - bottom);
  const yLabel = (y) => (interleave ? String(Math.round(y)) : percent(y, step < 0.01 ? 1 : 0));
  const ticks = [];
  for (let y = 0; y <= yMax + step / 2; y += step) {
    ticks.push(svg("line", { class: "grid", x1: left, x2: W - right, y1: sy(y), y2: sy(y) }),
      svg("text", { x: left - 6, y: sy(y) + 4, "text-anchor": "end", text: yLabel(y) }));
  }
  // Time ticks on whole steps of the clock (1 s up to a day), at most about six of them.
  const tStep = TIME_STEPS_S.find((s) => s * 1000 * 6 >= t1 - t0) * 1000 || t1 - t0;
  for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
    const iso = new Date(t).toISOString();
    ticks.push(svg("line", { class: "tick", x1: sx(t), x2: sx(t), y1: H - bottom, y2: H - bottom + 4 }),
      svg("text", { x: sx(t), y: H - bottom + 16, "text-anchor": "middle",
        text: tStep >= 86_400_000 ? iso.slice(0, 10) : tStep >= 60_000 ? iso.slice(11, 16) : iso.slice(11, 19) }));
  }
  const paths = lines.map((line, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const d = line.points.map((p, j) => `${j ? "L" : "M"}${sx(p.t).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ");
    return svg("g", { "data-variant": line.name },
      svg("path", { class: "series", "data-variant": line.name, d: d || null, stroke: colour, fill: "none" },
        svg("title", { text: line.name })),
      line.points.length > MARKED_POINTS ? null : line.points.map((p) =>
        svg("circle", { class: "point", cx: sx(p.t).toFixed(1), cy: sy(p.y).toFixed(1), r: 2.5, fill: colour })));
  });
  return svg(
    "svg",
    { class: "plot", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": interleave ? "cumulative clicks credited to each variant over time"
        : `cumulative CTR@${report.k} of each variant over time` },
    ticks,
    svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }),
    svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: H - bottom }),
    svg("text", { class: "label", x: (left + W - right) / 2, y: H - 10, "text-anchor": "middle", text: "time (UTC)" }),
    svg("text", { class: "label", x: 14, y: (top + H - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(top + H - bottom) / 2})`,
      text: interleave ? "clicks credited, cumulative" : `CTR@${report.k}, cumulative` }),
    paths,
  );
}

function seriesLegend(report) {
  const legend = el("ul", { class: "legend" }, report.variants.map((v, i) =>
    el("li", { "data-variant": v.name }, el("span", { class: "swatch", "data-colour": i % PALETTE.length }),
      el("strong", { text: v.name }), " ", el("code", { text: v.model }))));
  for (const swatch of legend.querySelectorAll(".swatch")) swatch.style.background = PALETTE[swatch.dataset.colour];
  return legend;
}

function renderExperiment(main) {
  const name = document.body.dataset.experiment;
  const status = el("p", { class: "muted", role: "status", id: "experiment-status" });
  const head = el("div", { id: "experiment" });
  const numbers = el("div", { id: "experiment-numbers" });
  const plot = el("div", { id: "experiment-plot" });
  main.replaceChildren(
    el("p", {}, el("a", { href: `${HOME}experiments`, text: "← every experiment" })),
    section(`Experiment ${name}`, head, status),
    section("Numbers", numbers),
    section("Over time", plot),
  );
  async function refresh() {
    let answer;
    try {
      answer = await api(`/v1/experiments/${encodeURIComponent(name)}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showError(head, error);
      numbers.replaceChildren();
      plot.replaceChildren();
      return error.status !== 404; // a deleted experiment stays deleted: stop asking
    }
    const { data: report, role } = answer;
    head.replaceChildren(experimentFacts(report),
      allows(role, "admin") ? experimentActions(report, status, refresh) : null);
    numbers.replaceChildren(report.kind === "interleave" ? interleavingFacts(report) : variantTable(report));
    const points = report.series.points.length;
    plot.replaceChildren(
      seriesLines(report).some((line) => line.points.length)
        ? el("div", {}, drawSeries(report), seriesLegend(report),
          el("p", { class: "muted", text: `${points} point${points === 1 ? "" : "s"}, one per ` +
            `${report.series.bucket_s} s with events, each counting everything up to it` }))
        : el("p", { class: "muted", text: "No event credited yet: the plot starts at the first impression." }),
    );
    return true;
  }
  every(2000, refresh);
}

// -- start -------------------------------------------------------------------------------------------------
const PAGES = { overview: renderOverview, jobs: renderJobs, models: renderModels, try: renderTry, map: renderMap,
  experiments: renderExperiments, experiment: renderExperiment };
PAGES[document.body.dataset.page](document.getElementById("main"));
