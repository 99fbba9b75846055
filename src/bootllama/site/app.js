// bootllama's page: boots the image in v86 and streams COM1 into #text.
// Contract: #text holds exactly the bytes the sector writes to COM1 after its loading dots (UTF-8);
// #status reads "done" once the sector has written its exit code 10 (E_DONE) to port 0xF4.
// Typing (talk.md): lines from #talk go to COM1's receiver of the story machine (talk.img, built
// with the site: no rebuild); they show in #text as a terminal echoes them, and
// window.bootllama.com1 holds COM1's bytes alone (UTF-8), which are run.c's stdout.
// One boot at a time: a new one (a submit, even one whose settings are then rejected) cancels the
// one in flight at whatever stage it is (fetching, starting Pyodide, building, running) and
// clears its story; only the newest boot writes to the page.
"use strict";

const $ = (id) => document.getElementById(id);
const SITE = "/site";  // where the page's files go in Pyodide's file system
// The longest link the page makes: common web servers take a request line of about 8 KB (nginx's
// 8 KiB buffer, Apache's 8,190 bytes) and answer a longer one with "414 URI Too Long".
const LINK_LIMIT = 8000;
let pyodideReady = null;
// the newest boot: { emulator, loaded, stopping, timers, finished }; an older one is retired and
// its events are ignored
let current = null;
let teardown = Promise.resolve();  // retired emulators being destroyed, before the next one starts
// for tests: boots finished, boots cancelled, what COM1 carried
window.bootllama = { runs: 0, cancelled: 0, com1: "" };
let typing = null;  // the newest boot's input: { typed, loaded, queue, echo, run, echoes }

function setStatus(message, error = false) {
    $("status").textContent = message;
    $("status").classList.toggle("error", error);
}

async function fetchBytes(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
}

const fetchJson = async (url) => JSON.parse(new TextDecoder().decode(await fetchBytes(url)));
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function pow2MiB(mib) {
    let bytes = 1 << 20;
    while (bytes < mib * (1 << 20)) bytes *= 2;
    return bytes;
}

async function sha256(bytes) {
    if (!crypto.subtle) return null;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The settings in a URL or the form, checked as run.c's flags; returns [settings, error].
// Every value stays the text typed (a 20-digit seed would round as a JavaScript number).
function checkSettings(raw) {
    const out = { i: raw.i ?? "", n: (raw.n ?? "0").trim() || "0", t: (raw.t ?? "0").trim() || "0",
                  s: (raw.s ?? "0").trim() || "0" };
    if (!/^[+-]?\d+$/.test(out.n)) return [null, `steps must be a whole number, not "${out.n}"`];
    const t = Number(out.t);
    if (!Number.isFinite(t)) return [null, `temperature must be a number, not "${out.t}"`];
    if (!/^[+-]?\d+$/.test(out.s)) return [null, `seed must be a whole number, not "${out.s}"`];
    return [out, null];
}

function fillForm(settings) {
    $("prompt").value = settings.i;
    $("steps").value = settings.n;
    $("temperature").value = settings.t;
    $("seed").value = settings.s;
}

let siteJson = null;
async function siteMeta() {
    if (!siteJson) siteJson = fetchJson("site.json");
    siteJson.catch(() => { siteJson = null; });
    return siteJson;
}

// The tokenizer's pieces as strings of bytes (run.c's C strings: up to a NUL), for promptTooLong.
let piecesPromise = null;
function pieces(meta) {
    if (!piecesPromise) {
        piecesPromise = fetchBytes(meta.tokenizer).then((bytes) => {
            const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
            const set = new Set();
            let at = 4;  // int32 max_token_length, then per piece: float32 score, int32 length, bytes
            for (let id = 0; id < meta.vocab_size; id++) {
                const length = view.getInt32(at + 4, true);
                let piece = bytes.subarray(at + 8, at + 8 + length);
                const nul = piece.indexOf(0);
                if (nul >= 0) piece = piece.subarray(0, nul);
                set.add(String.fromCharCode(...piece));
                at += 8 + length;
            }
            return set;
        });
        piecesPromise.catch(() => { piecesPromise = null; });
    }
    return piecesPromise;
}

// A prompt that cannot fit the context, refused before Python starts (Pyodide takes seconds to
// start, and the encoder's merges take minutes on a long prompt).  A lower bound on run.c's token
// count (bootllama.web.prompt_bound says why it is one and for which tokenizers): BOS, plus the
// fewest pieces (or single bytes) the dummy prefix " " and the prompt split into ("pieces"), or
// the prompt's bytes over the longest piece ("bytes"), or none.  run.c's encode reads the prompt
// up to its first NUL.  The exact count stays Python's, which refuses what passes here but does
// not fit.
async function leastTokens(prompt, meta) {
    let bytes = new TextEncoder().encode(prompt);
    const nul = bytes.indexOf(0);
    if (nul >= 0) bytes = bytes.subarray(0, nul);
    if (meta.prompt_bound === "none") return 0;  // no bound for this tokenizer: Python's check alone
    const least = 1 + Math.ceil(bytes.length / meta.longest_piece);
    if (least > meta.seq_len || meta.prompt_bound !== "pieces" || !bytes.length) return least;
    const set = await pieces(meta);
    const text = " " + Array.from(bytes, (b) => String.fromCharCode(b)).join("");
    const fewest = new Int32Array(text.length + 1);  // fewest[i]: tokens for text's first i bytes
    for (let i = 1; i <= text.length; i++) {
        let best = fewest[i - 1] + 1;
        for (let l = 2; l <= Math.min(meta.longest_piece, i); l++) {
            if (fewest[i - l] + 1 < best && set.has(text.slice(i - l, i))) best = fewest[i - l] + 1;
        }
        fewest[i] = best;
    }
    return 1 + fewest[text.length];
}
window.bootllama.leastTokens = async (prompt) => leastTokens(prompt, await siteMeta());

async function promptTooLong(prompt, meta) {
    const least = await leastTokens(prompt, meta);
    return least > meta.seq_len ? `prompt is at least ${least} tokens; the context holds ${meta.seq_len}` : null;
}

// The seed as typed, and the one run.c uses when its atoi makes another of it (past 32 bits).
function seedText(info, typed) {
    if (info.seed_drawn) return `seed ${info.seed} (from the clock)`;
    let same = false;
    try {
        same = BigInt.asUintN(64, BigInt(typed.replace(/^\+/, ""))) === BigInt(info.seed);
    } catch (e) { /* not an integer: show both */ }
    return same ? `seed ${typed}` : `seed ${typed} (run.c's atoi reads ${info.seed})`;
}

async function python() {
    if (!pyodideReady) {
        pyodideReady = (async () => {
            const py = await loadPyodide({ indexURL: new URL("pyodide/", location.href).href });
            const meta = await siteMeta();
            const files = ["site.json", meta.checkpoint, meta.tokenizer, meta.rope,
                           ...Object.values(meta.engines).flatMap((e) => [e.file, e.efi]), ...meta.modules];
            for (const file of files) {
                const path = `${SITE}/${file}`;
                py.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
                py.FS.writeFile(path, await fetchBytes(file));
            }
            py.runPython(`
import json, os, sys
sys.path.insert(0, "${SITE}/py")
os.umask(0o022)  # Emscripten starts with 0o777, and image.py's atomic write honours the umask
from bootllama import pagebuild
from bootllama.errors import BootllamaError

def page_build(prompt, steps, temperature, seed):
    try:
        info = pagebuild.build("${SITE}", "/tmp/boot.img", prompt, steps, temperature, seed)
    except BootllamaError as e:
        return json.dumps({"error": str(e)})
    info["seed"] = str(info["seed"])  # a 64-bit seed, exact: JavaScript's numbers would round it
    return json.dumps(info)
`);
            return py;
        })();
        pyodideReady.catch(() => { pyodideReady = null; });
    }
    return pyodideReady;
}

class UserError extends Error {}

// Make ``run`` the newest boot: retire the one before (stop it, destroy it before the next
// emulator starts) and clear its story.
function newRun() {
    const old = current;
    const run = { emulator: null, loaded: null, stopping: null, timers: [], finished: false };
    current = run;
    if (old) {
        if (!old.finished) window.bootllama.cancelled += 1;
        retire(old);
    }
    $("text").textContent = "";
    $("stats").textContent = "";
    window.bootllama.com1 = "";
    typing = null;
    return run;
}

function stopOnce(run) {
    if (!run.stopping) run.stopping = run.emulator.stop();
    return run.stopping;
}

function retire(run) {
    run.timers.forEach(clearInterval);
    run.timers = [];
    const em = run.emulator;
    if (!em) return;
    const loaded = run.loaded;
    const stopping = loaded.then(() => stopOnce(run));
    // a destroy that never settles must not hold up every later boot
    const gone = stopping.then(() => em.destroy());
    teardown = teardown.then(() => Promise.race([gone, delay(3000)])).catch((e) => console.error(e));
}

async function boot(run, imageBytes, info, typedSeed) {
    const guards = (await siteMeta()).guards;
    const digest = await sha256(imageBytes);
    await teardown;  // the emulators before this one are gone before it takes the screen
    if (run !== current) return;
    window.bootllama.image = { sha256: digest, bytes: imageBytes.length, info };
    const seed = seedText(info, typedSeed);
    $("stats").textContent = info.temperature > 0 ? seed : "";
    const decoder = new TextDecoder("utf-8");
    let dots = 0;
    let guarded = false;
    const printed = [];
    let beats = 0;
    let tLoaded = 0;
    let textNode = document.createTextNode("");
    $("text").appendChild(textNode);
    let pendingText = "";
    const live = () => run === current && !run.finished;
    // a line typed on the page: shown as a terminal echoes it, then sent once the UART exists
    const echo = (line) => {
        if (pendingText) { textNode.appendData(pendingText); pendingText = ""; }
        const span = document.createElement("span");
        span.className = "typed";
        span.textContent = line;
        $("text").appendChild(span);
        textNode = document.createTextNode("");
        $("text").appendChild(textNode);
    };
    // a typed line is shown where a terminal shows it: after the guide that asks for it
    typing = { typed: !!info.typed, loaded: false, queue: [], echo, run, echoes: [] };

    const rate = () => {
        const seconds = (performance.now() - tLoaded) / 1000;
        return seconds > 0 ? (beats / seconds).toFixed(1) : "0";
    };
    const show = () => {
        if (!live()) return;
        if (pendingText) { textNode.appendData(pendingText); pendingText = ""; }
        if (dots < info.chunks) setStatus(`loading the model: ${dots} of ${info.chunks} chunks of 16 KiB`);
        else setStatus(`${beats} tokens, ${rate()} tok/s`);
    };
    const finish = (message, error) => {
        if (!live()) return;
        pendingText += decoder.decode();
        if (pendingText) { textNode.appendData(pendingText); pendingText = ""; }
        run.finished = true;
        run.timers.forEach(clearInterval);
        run.timers = [];
        setTimeout(() => stopOnce(run), 0);  // the screen keeps the PC's last picture
        if (!error) $("stats").textContent = `${beats} tokens, ${rate()} tok/s` +
            (info.temperature > 0 ? `, ${seed}` : "") + `, loaded in ${((tLoaded - t0) / 1000).toFixed(2)} s`;
        setStatus(message, error);
        window.bootllama.runs += 1;
    };

    const t0 = performance.now();
    const em = new V86({
        wasm_path: "v86/v86.wasm",
        memory_size: pow2MiB(info.memory_mib),
        vga_memory_size: 8 << 20,
        screen_container: $("screen_container"),
        bios: { url: "bios/seabios.bin" },
        vga_bios: { url: "bios/vgabios.bin" },
        hda: { buffer: imageBytes.buffer.slice(imageBytes.byteOffset, imageBytes.byteOffset + imageBytes.byteLength) },
        boot_order: 0x132,
        autostart: false,
        disable_keyboard: !info.typed,  // the story machine reads the keyboard too (int 16h)
        disable_mouse: true,
        disable_speaker: true,
    });
    run.emulator = em;
    run.loaded = new Promise((resolve) => em.add_listener("emulator-loaded", resolve));
    em.add_listener("serial0-output-byte", (byte) => {
        if (!live()) return;
        if (dots < info.chunks && !guarded) {
            if (byte === 0x2E) {
                dots += 1;
                if (dots === info.chunks) tLoaded = performance.now();
                return;
            }
            guarded = true;  // a guard's message ('!...') instead of the dots
        }
        if (guarded) { printed.push(byte); return; }
        printed.push(byte);
        const piece = decoder.decode(Uint8Array.of(byte), { stream: true });
        pendingText += piece;
        window.bootllama.com1 += piece;
        if (typing && typing.run === run && typing.echoes.length && GUIDES.some((g) => window.bootllama.com1.endsWith(g))) {
            typing.echo(typing.echoes.shift());
        }
    });
    em.add_listener("emulator-loaded", () => {
        if (!live()) return;
        const cpu = em.v86.cpu;
        try {
            // a read past the end of a short image fails as on QEMU: the sector stops with !disk
            bootllamaAbortReadsPastTheEnd(em);
        } catch (e) {
            finish(`error: ${e.message}`, true);
            return;
        }
        cpu.io.register_write(0xF4, {}, (al) => {
            al &= 0xFF;
            if (al === 10) { finish("done", false); return; }  // engine.inc's E_DONE
            // as bootllama.pcs.base.describe_exit: what the sector printed, what its code means
            const what = guards[al] ?? `unknown exit code ${al}`;
            const shown = new TextDecoder().decode(Uint8Array.from(printed)).replace(/^\.+/, "").trim();
            finish(shown ? `the sector stopped: ${shown} (${what})` : `the sector stopped: ${what}`, true);
        });
        cpu.io.register_write(0xE9, {}, () => { beats += 1; });
        setStatus("booting");
        em.run();
        if (typing && typing.run === run) {
            typing.loaded = true;
            for (const bytes of typing.queue) sendBytes(bytes);
            typing.queue = [];
        }
    });
    run.timers.push(setInterval(show, 100));
    // halted with interrupts off and no exit code: nothing more will come
    run.timers.push(setInterval(() => {
        const cpu = em.v86 && em.v86.cpu;
        if (cpu && cpu.in_hlt[0] && !(cpu.flags[0] & 0x200)) finish("the PC halted before the story was over", true);
    }, 250));
}

// COM1's receiver: v86's UART queues what it is sent, so a line typed early waits for the PC
function sendBytes(bytes) {
    const em = typing && typing.run === current ? typing.run.emulator : null;
    if (!em) return;
    for (const byte of bytes) em.bus.send("serial0-input", byte);
}

// what the engine prints before it reads a line (conversation.py's guides)
const GUIDES = ["Prompt: ", "User: ", "Enter system prompt (optional): "];

function sendInput(bytes, shown) {
    if (!typing) return;
    if (shown !== null) {
        if (GUIDES.some((g) => window.bootllama.com1.endsWith(g)) && !typing.echoes.length) typing.echo(shown);
        else typing.echoes.push(shown);
    }
    if (typing.loaded) sendBytes(bytes);
    else typing.queue.push(bytes);
}

let talkStarting = null;
$("talk").addEventListener("submit", async (event) => {
    event.preventDefault();
    const line = $("line").value;
    $("line").value = "";
    // a line typed with no story machine running boots the site's one (talk.img) first
    if (!typing || !typing.typed || typing.run !== current || typing.run.finished) {
        if (!talkStarting) talkStarting = start({}, "talk").finally(() => { talkStarting = null; });
        await talkStarting;
    }
    if (typing && typing.typed && typing.run === current) sendInput(new TextEncoder().encode(line + "\n"), line + "\n");
});

$("eot").addEventListener("click", () => {
    if (typing && typing.typed && typing.run === current) sendInput(Uint8Array.of(4), null);  // EOT: end of input
});

// Boot the site's image ("default"), the site's story machine ("talk": talk.img, no image is
// built; a prompt of "-" from the URL or the form asks for it too, with the site's other
// settings), or build one for ``settings`` ("url", "form"); ``link`` (the form's) becomes the
// page's URL once the settings are accepted, never before.
async function start(settings, source, link = null) {
    const run = newRun();
    const live = () => run === current;
    if (source !== "default" && settings.i === "-") source = "talk";
    try {
        let bytes, info;
        if (source === "default" || source === "talk") {
            info = await fetchJson(source === "talk" ? "talk.json" : "boot.json");
            if (!live()) return;
            settings = Object.fromEntries(Object.entries(info.settings).map(([k, v]) => [k, String(v)]));
            fillForm(settings);
            if (source === "talk") {  // the URL names the settings the story machine has
                const query = `?${new URLSearchParams(settings).toString().replace(/\+/g, "%20")}`;
                link = query === location.search ? null : query;
            }
            setStatus(source === "talk" ? "fetching the story machine" : "fetching the image");
            bytes = await fetchBytes(source === "talk" ? "talk.img" : "boot.img");
        } else {
            const meta = await siteMeta();
            if (!live()) return;
            const tooLong = await promptTooLong(settings.i, meta);
            if (!live()) return;
            if (tooLong) throw new UserError(tooLong);
            const linkLength = link === null ? 0 : new URL(link, location.href).href.length;
            if (linkLength > LINK_LIMIT) {
                throw new UserError(`the link for these settings would be ${linkLength} characters, more than ` +
                                    `the ${LINK_LIMIT} a web server takes`);
            }
            setStatus("starting Python (Pyodide) to build the image");
            const py = await python();
            if (!live()) return;
            setStatus("building the image");
            const build = py.globals.get("page_build");
            try {
                info = JSON.parse(build(settings.i, settings.n, settings.t, settings.s));
            } finally {
                build.destroy();
            }
            if (info.error) throw new UserError(info.error);
            bytes = py.FS.readFile("/tmp/boot.img");
        }
        if (!live()) return;
        if (link !== null) history.pushState(null, "", link);
        await boot(run, bytes, info, settings.s);
    } catch (e) {
        if (!live()) return;
        run.finished = true;
        console.error(e);
        setStatus(e instanceof UserError ? e.message : `error: ${e.message || JSON.stringify(e)}`, true);
    }
}

$("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    const raw = { i: $("prompt").value, n: $("steps").value, t: $("temperature").value, s: $("seed").value };
    const [settings, error] = checkSettings(raw);
    if (error) {
        newRun().finished = true;  // a rejected setting cancels the boot in flight and clears its story
        setStatus(error, true);  // and the URL stays as it was
        return;
    }
    fillForm(settings);
    const query = new URLSearchParams(settings).toString().replace(/\+/g, "%20");
    start(settings, "form", `?${query}`);
});

window.addEventListener("popstate", () => location.reload());

const params = new URLSearchParams(location.search);
if (["i", "n", "t", "s"].some((k) => params.has(k))) {
    const [settings, error] = checkSettings({ i: params.get("i") ?? "", n: params.get("n") ?? "0",
                                              t: params.get("t") ?? "0", s: params.get("s") ?? "0" });
    if (error) setStatus(error, true);
    else { fillForm(settings); start(settings, "url"); }
} else {
    start({}, "default");
}
