// The dashboard's page: signs in if the server asks for the cluster key, then draws every
// update the server pushes over the WebSocket (src/dashboard/server.ts DashboardUpdate: each
// host's snapshot and the rates between its last two). Plain browser JavaScript, no build.
(() => {
  const PATHS = ["bypass", "split", "native"];
  const COLORS = { bypass: "#1f77b4", split: "#d62728", native: "#2ca02c" };
  const HISTORY = 120;
  const $ = (id) => document.getElementById(id);
  const esc = (s) =>
    String(s).replace(
      /[&<>"']/g,
      (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
    );

  function si(n, unit) {
    const a = Math.abs(n);
    const [v, p] =
      a >= 1e9 ? [n / 1e9, "G"] : a >= 1e6 ? [n / 1e6, "M"] : a >= 1e3 ? [n / 1e3, "k"] : [n, ""];
    const s =
      a === 0 ? "0" : Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
    return `${s} ${p}${unit || ""}`.trim();
  }
  const bytes = (n) =>
    n >= 1 << 30
      ? `${(n / (1 << 30)).toFixed(1)} GiB`
      : n >= 1 << 20
        ? `${(n / (1 << 20)).toFixed(1)} MiB`
        : n >= 1 << 10
          ? `${(n / (1 << 10)).toFixed(1)} KiB`
          : `${n} B`;
  function duration(s) {
    if (s === undefined || s === null) return "-";
    const t = Math.floor(s);
    const h = Math.floor(t / 3600);
    const m = Math.floor((t % 3600) / 60);
    return `${h}:${String(m).padStart(2, "0")}:${String(t % 60).padStart(2, "0")}`;
  }
  const num = (v, cls) => `<td class="num${cls ? ` ${cls}` : ""}">${v}</td>`;
  const pathTag = (p) => `<span class="path ${esc(p)}" data-path="${esc(p)}">${esc(p)}</span>`;

  // ---- sign-in ----------------------------------------------------------------------------------

  async function signIn(ev) {
    ev.preventDefault();
    $("login-error").textContent = "";
    try {
      const ch = await (await fetch("/auth/challenge")).json();
      const enc = new TextEncoder();
      const key = enc.encode($("login-key").value.replace(/\s+$/, ""));
      const label = enc.encode(`${ch.label}\0`);
      const nonce = new Uint8Array(ch.nonce.match(/../g).map((h) => parseInt(h, 16)));
      const msg = new Uint8Array(label.length + nonce.length);
      msg.set(label);
      msg.set(nonce, label.length);
      const proof = myrixenCrypto.hex(myrixenCrypto.hmacSha256(key, msg));
      const r = await fetch("/auth", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ nonce: ch.nonce, proof }),
      });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || `refused (${r.status})`);
      $("login-key").value = "";
      $("login").hidden = true;
      start();
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  }

  // ---- live updates -----------------------------------------------------------------------------

  let selected = null; // { host, domid }
  let lastUpdate = null;
  const history = { t: [], bytes: {}, msgs: {} };
  for (const p of PATHS) {
    history.bytes[p] = [];
    history.msgs[p] = [];
  }
  let charts = null;

  function start() {
    $("main").hidden = false;
    connect();
  }

  function connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => setStatus("live", "live");
    ws.onmessage = (ev) => {
      try {
        render(JSON.parse(ev.data));
      } catch (e) {
        console.error(e);
      }
    };
    ws.onclose = () => {
      setStatus("down", "disconnected: retrying");
      setTimeout(connect, 1000);
    };
  }

  function setStatus(cls, text) {
    const s = $("status");
    s.className = `status ${cls}`;
    s.textContent = text;
  }

  function render(u) {
    lastUpdate = u;
    $("clock").textContent = new Date(u.time).toLocaleTimeString();
    renderHosts(u);
    renderProof(u);
    renderDomains(u);
    renderEndpoints(u);
    renderDetail(u);
    pushHistory(u);
    renderCharts();
    renderLatency(u);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function renderHosts(u) {
    $("hosts").innerHTML = u.hosts
      .map((h) => {
        if (!h.snapshot)
          return `<div class="card" data-testid="host-card" data-host="${esc(h.label)}"><div class="name">${esc(h.label)}</div><div class="error">${esc(h.error || "no answer")}</div></div>`;
        const s = h.snapshot;
        const links = s.nic.links.length
          ? s.nic.links
              .map((l) => `NIC ${s.host.nicId} ⇄ NIC ${l.peerNic} <b>${esc(l.state)}</b>`)
              .join("<br>")
          : "no links";
        const guests = s.domains.filter(
          (d) => d.kind !== "driver" && (d.state === "running" || d.state === "booting"),
        );
        return `<div class="card" data-testid="host-card" data-host="${esc(h.label)}">
          <div class="name">${esc(s.host.name)} <span class="dim">NIC ${s.host.nicId}${s.host.embedded ? " · embedded" : ""}</span></div>
          <div class="dim">${esc(s.host.control || "")} · up ${duration(s.host.uptimeS)} · pid ${s.host.pid}</div>
          <div>${guests.length} running domains · ${s.endpoints.length} endpoints (NIC: ${s.nic.openEndpoints.length}/${s.nic.maxEndpoints}) · ${s.nic.regions} regions</div>
          <div>${links}</div>
          <div class="dim">jobs: ${s.jobs.map((j) => `${esc(j.job)} (${j.ranks.length} ranks)`).join(", ") || "none"}</div>
        </div>`;
      })
      .join("");
  }

  function sumPaths(u) {
    const out = {};
    for (const p of PATHS)
      out[p] = { domains: 0, msgs: 0, bytes: 0, hypercalls: 0, grantOps: 0, evtchnSends: 0 };
    let backend = 0;
    let copies = 0;
    let notes = 0;
    for (const h of u.hosts) {
      if (!h.rates) continue;
      for (const p of PATHS) for (const k of Object.keys(out[p])) out[p][k] += h.rates.paths[p][k];
      backend += h.rates.backendRequests;
      copies += h.rates.netbackGrantCopies;
      notes += h.rates.netbackNotifications;
    }
    return { paths: out, backend, copies, notes };
  }

  function renderProof(u) {
    const { paths, backend, copies, notes } = sumPaths(u);
    const zeroCls = (active, v) => (active ? (v === 0 ? "zero" : "nonzero") : "");
    let html =
      "<tr><th>path</th><th>domains with traffic</th><th>messages/s</th><th>bytes/s</th><th>hypercalls/s</th><th>grant ops/s</th><th>event-channel sends/s</th></tr>";
    for (const p of PATHS) {
      const r = paths[p];
      const a = r.domains > 0;
      html += `<tr data-testid="proof-row" data-path="${p}"><td>${pathTag(p)}</td>${num(r.domains)}${num(si(r.msgs))}${num(si(r.bytes, "B"))}${num(si(r.hypercalls), zeroCls(a, r.hypercalls))}${num(si(r.grantOps), zeroCls(a, r.grantOps))}${num(si(r.evtchnSends), zeroCls(a, r.evtchnSends))}</tr>`;
    }
    $("proof").innerHTML = html;
    $("proof-dom0").innerHTML =
      `driver domain: <b data-testid="myrback-rate">${si(backend)}</b> myrback requests/s · ${si(copies)} netback grant copies/s · ${si(notes)} netback notifications/s. ` +
      "On the bypass path all of these stay at 0 while messages flow: the backend and the hypervisor see set-up only.";
  }

  function devicesText(d) {
    return d.devices.map((x) => `${x.type}${x.devid}: ${x.frontState}/${x.backState}`).join(" · ") || "-";
  }

  function renderDomains(u) {
    let html =
      "<tr><th>host</th><th>id</th><th>name</th><th>kind</th><th>state</th><th>job</th><th>devices (front/back xenbus state)</th><th>uptime</th><th>traffic now</th><th>NIC msgs/s</th><th>fast path B/s</th><th>vif frames/s</th><th>hypercalls/s</th></tr>";
    for (const h of u.hosts) {
      if (!h.snapshot) continue;
      for (const d of h.snapshot.domains) {
        const r = h.rates?.domains[d.domid];
        const gone = d.state !== "running" && d.state !== "booting";
        const sel = selected && selected.host === h.label && selected.domid === d.domid;
        html += `<tr class="clickable${sel ? " selected" : ""}${gone ? " gone" : ""}" data-testid="domain-row" data-host="${esc(h.label)}" data-domid="${d.domid}" data-name="${esc(d.name)}" data-state="${esc(d.state)}">
          <td>${esc(h.label)}</td>${num(d.domid)}<td>${esc(d.name)}</td><td>${esc(d.kind)}</td>
          <td class="state-${esc(d.state)}" data-testid="domain-state">${esc(d.state)}</td>
          <td>${d.job ? `${esc(d.job.job)} rank ${d.job.rank}` : ""}</td>
          <td>${esc(devicesText(d))}</td><td>${duration(d.uptimeS)}</td>
          <td data-testid="domain-path">${r && !gone ? pathTag(r.path) : ""}</td>
          ${num(r ? si(r.nicMsgs) : "")}${num(r ? si(r.bypassBytes, "B") : "")}${num(r ? si(r.vifFrames) : "")}${num(r ? si(r.hypercalls) : "")}</tr>`;
      }
    }
    const t = $("domains");
    t.innerHTML = html;
    for (const row of t.querySelectorAll("tr[data-domid]"))
      row.onclick = () => {
        selected = { host: row.dataset.host, domid: Number(row.dataset.domid) };
        render(lastUpdate);
      };
  }

  function endpointRows(h, eps) {
    return eps
      .map((e) => {
        const r = h.rates?.endpoints[e.id];
        const q = e.queues;
        const peers = e.peers.map((p) => `ep${p.endpoint}@dom${p.domid} (${p.via})`).join(", ") || "-";
        return `<tr data-testid="endpoint-row" data-host="${esc(h.label)}" data-endpoint="${e.id}" data-domid="${e.domid}" data-path="${esc(e.path)}">
          <td>${esc(h.label)}</td>${num(e.id)}${num(e.domid)}<td>${esc(e.owner)}</td><td>${pathTag(e.path)}</td><td>${esc(peers)}</td>
          ${num(`${q.sendQueue}/${q.eventQueue}/${bytes(q.recvBytes)}`)}${num(`${e.regions} (${bytes(e.registeredBytes)})`)}
          ${num(r ? `${si(r.msgsIn)} / ${si(r.msgsOut)}` : "")}${num(r ? `${si(r.bytesIn, "B")} / ${si(r.bytesOut, "B")}` : "")}
          <td class="num" data-testid="endpoint-channel-rate">${r ? `${si(r.channelBytesIn, "B")} / ${si(r.channelBytesOut, "B")}` : ""}</td></tr>`;
      })
      .join("");
  }

  const EP_HEAD =
    "<tr><th>host</th><th>ep</th><th>dom</th><th>owner</th><th>path</th><th>co-resident peers</th><th>queues: send / events / receive</th><th>regions</th><th>NIC msgs/s in / out</th><th>NIC bytes/s in / out</th><th>channel B/s in / out</th></tr>";

  function renderEndpoints(u) {
    let html = EP_HEAD;
    for (const h of u.hosts) if (h.snapshot) html += endpointRows(h, h.snapshot.endpoints);
    $("endpoints").innerHTML = html;
  }

  function kv(obj) {
    return `<div class="kv">${Object.entries(obj)
      .map(([k, v]) => {
        const text =
          typeof v !== "number" ? esc(v) : Number.isInteger(v) && Math.abs(v) < 10000 ? String(v) : si(v);
        return `<div>${esc(k)} <span class="v">${text}</span></div>`;
      })
      .join("")}</div>`;
  }

  function renderDetail(u) {
    const box = $("detail");
    if (!selected) {
      box.hidden = true;
      return;
    }
    const h = u.hosts.find((x) => x.label === selected.host);
    const d = h?.snapshot?.domains.find((x) => x.domid === selected.domid);
    box.hidden = false;
    if (!d) {
      $("detail-title").textContent = `domain ${selected.domid} on ${selected.host}: no longer there`;
      $("detail-body").innerHTML = "";
      return;
    }
    box.dataset.domid = String(d.domid);
    $("detail-title").textContent = `${d.name} (domain ${d.domid} on ${h.label}): ${d.state}`;
    const eps = h.snapshot.endpoints.filter((e) => e.domid === d.domid);
    let html = `<p>${esc(d.kind)} · ${bytes(d.memoryKiB * 1024)}${d.heapKiB === undefined ? "" : ` · heap ${bytes(d.heapKiB * 1024)}`}${d.buffersKiB === undefined ? "" : ` · typed arrays ${bytes(d.buffersKiB * 1024)}`} · vCPU thread ${d.thread} · up ${duration(d.uptimeS)}${d.job ? ` · job ${esc(d.job.job)} rank ${d.job.rank}` : ""}</p>`;
    html += `<h3>Devices</h3><p>${esc(devicesText(d))}${d.devices.find((x) => x.mac) ? ` · MAC ${esc(d.devices.find((x) => x.mac).mac)}` : ""}</p>`;
    html += `<h3>Its MX endpoints (${eps.length})</h3>`;
    html += eps.length
      ? `<table data-testid="detail-endpoints">${EP_HEAD}${endpointRows(h, eps)}</table>`
      : "<p class='dim'>none on the NIC (a guest whose MX runs over its vif has none)</p>";
    for (const e of eps) html += `<h3>endpoint ${e.id}: the NIC's counters</h3>${kv(e.nic)}`;
    html += `<h3>Hypervisor counters</h3>${kv(d.counters)}`;
    if (d.vif) html += `<h3>vif (split path, netback's counters)</h3>${kv(d.vif)}`;
    $("detail-body").innerHTML = html;
  }

  // ---- charts -----------------------------------------------------------------------------------

  function pushHistory(u) {
    // An update without rates (the first after a start) has nothing to plot.
    if (!u.hosts.some((h) => h.rates)) return;
    if (history.t.length && u.time / 1000 <= history.t[history.t.length - 1]) return;
    const { paths } = sumPaths(u);
    history.t.push(u.time / 1000);
    for (const p of PATHS) {
      history.bytes[p].push(paths[p].bytes);
      history.msgs[p].push(paths[p].msgs);
    }
    if (history.t.length > HISTORY) {
      history.t.shift();
      for (const p of PATHS) {
        history.bytes[p].shift();
        history.msgs[p].shift();
      }
    }
  }

  function makeChart(el, title, unit) {
    const width = Math.max(380, Math.min(640, el.parentElement.clientWidth - 10));
    return new uPlot(
      {
        title,
        width,
        height: 170,
        series: [
          {},
          ...PATHS.map((p) => ({
            label: p,
            stroke: COLORS[p],
            width: 2,
            value: (_u, v) => (v == null ? "-" : si(v, unit)),
          })),
        ],
        axes: [{}, { values: (_u, vals) => vals.map((v) => si(v, unit)), size: 84 }],
        scales: { x: { time: true } },
      },
      [[], [], [], []],
      el,
    );
  }

  function renderCharts() {
    if (typeof uPlot === "undefined") return;
    if (!charts)
      charts = {
        bytes: makeChart($("chart-bytes"), "bytes per second", "B/s"),
        msgs: makeChart($("chart-msgs"), "messages (NIC) or frames (split) per second", "/s"),
      };
    charts.bytes.setData([history.t, ...PATHS.map((p) => history.bytes[p])]);
    charts.msgs.setData([history.t, ...PATHS.map((p) => history.msgs[p])]);
  }

  // Histogram buckets: powers of two from 1 µs to 1 s.
  const BUCKETS = 21;
  const label = (i) => (i < 10 ? `${2 ** i}µ` : i < 20 ? `${2 ** (i - 10)}m` : "1s");

  function renderLatency(u) {
    let html = "";
    for (const p of PATHS) {
      const samples = u.latency[p] || [];
      const counts = new Array(BUCKETS).fill(0);
      for (const s of samples)
        counts[Math.max(0, Math.min(BUCKETS - 1, Math.floor(Math.log2(Math.max(1, s)))))]++;
      const max = Math.max(1, ...counts);
      const sorted = [...samples].sort((a, b) => a - b);
      const med = sorted.length ? sorted[Math.floor(sorted.length / 2)] : undefined;
      html += `<div class="histrow" data-testid="latency-${p}" data-samples="${samples.length}"><b>${pathTag(p)}</b> ${samples.length} samples${med !== undefined ? `, median ${med < 1000 ? `${med.toFixed(1)} µs` : `${(med / 1000).toFixed(2)} ms`}` : ""}
        <div class="hist">${counts.map((c) => `<div class="bar" style="height:${(c / max) * 100}%;background:${COLORS[p]}" title="${c}"></div>`).join("")}</div>
        <div class="hist-labels">${counts.map((_c, i) => `<span>${i % 2 === 0 ? label(i) : ""}</span>`).join("")}</div></div>`;
    }
    $("latency").innerHTML = html;
  }

  // ---- boot -------------------------------------------------------------------------------------

  $("login-form").addEventListener("submit", signIn);
  fetch("/auth/state")
    .then((r) => r.json())
    .then((s) => {
      if (s.required && !s.ok) {
        $("login").hidden = false;
        setStatus("down", "sign in");
      } else start();
    })
    .catch((e) => setStatus("down", `cannot reach the dashboard: ${e.message}`));
})();
