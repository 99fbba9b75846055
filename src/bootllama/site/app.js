// bootllama's page: boots the image in v86 and streams COM1 into #text.
// Contract: #text holds exactly the bytes the sector writes to COM1 after its loading dots (UTF-8);
// #status reads "done" once the sector has written its exit code 0 to port 0xF4.
// Typing (talk.md): lines from #talk go to COM1's receiver of the story machine (talk.img, built
// with the site: no rebuild); they show in #text as a terminal echoes them, and
// window.bootllama.com1 holds COM1's bytes alone (UTF-8), which are run.c's stdout.
"use strict";

const $ = (id) => document.getElementById(id);
const SITE = "/site";  // where the page's files go in Pyodide's file system
let emulator = null;
let pyodideReady = null;
let generation = 0;  // which boot is current: an old emulator's events are ignored
window.bootllama = { runs: 0, com1: "" };  // for tests: what the page booted, what COM1 carried
let typing = null;  // the current boot's input: { typed, loaded, queue, echo }

function setStatus(message, error = false) {
    $("status").textContent = message;
    $("status").classList.toggle("error", error);
}

async function fetchBytes(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
}

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
    if (!siteJson) siteJson = JSON.parse(new TextDecoder().decode(await fetchBytes("site.json")));
    return siteJson;
}

async function python() {
    if (!pyodideReady) {
        pyodideReady = (async () => {
            const py = await loadPyodide({ indexURL: new URL("pyodide/", location.href).href });
            const meta = await siteMeta();
            const files = ["site.json", meta.checkpoint, meta.tokenizer, meta.rope,
                           ...Object.values(meta.engines).map((e) => e.file), ...meta.modules];
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
        return json.dumps(pagebuild.build("${SITE}", "/tmp/boot.img", prompt, steps, temperature, seed))
    except BootllamaError as e:
        return json.dumps({"error": str(e)})
`);
            return py;
        })();
        pyodideReady.catch(() => { pyodideReady = null; });
    }
    return pyodideReady;
}

// Build the image for these settings with bootllama's own Python (Pyodide), as `bootllama build` does.
async function buildImage(settings) {
    setStatus("starting Python (Pyodide) to build the image");
    const py = await python();
    setStatus("building the image");
    const build = py.globals.get("page_build");
    const info = JSON.parse(build(settings.i, settings.n, settings.t, settings.s));
    build.destroy();
    if (info.error) throw new UserError(info.error);
    return [py.FS.readFile("/tmp/boot.img"), info];
}

class UserError extends Error {}

async function boot(imageBytes, info) {
    const run = ++generation;
    const guards = (await siteMeta()).guards;
    if (emulator) {
        const old = emulator;
        emulator = null;
        old.stop();
        await old.destroy();
    }
    $("text").textContent = "";
    window.bootllama.com1 = "";
    $("stats").textContent = info.temperature > 0 ? `seed ${info.seed}` : "";
    window.bootllama.image = { sha256: await sha256(imageBytes), bytes: imageBytes.length, info };
    const decoder = new TextDecoder("utf-8");
    let dots = 0;
    let guarded = false;
    const printed = [];
    let beats = 0;
    let tLoaded = 0;
    let finished = false;
    let textNode = document.createTextNode("");
    $("text").appendChild(textNode);
    let pendingText = "";
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
        if (run !== generation || finished) return;
        if (pendingText) { textNode.appendData(pendingText); pendingText = ""; }
        if (dots < info.chunks) setStatus(`loading the model: ${dots} of ${info.chunks} chunks of 32 KiB`);
        else setStatus(`${beats} tokens, ${rate()} tok/s`);
    };
    const ticker = setInterval(show, 100);
    const finish = (message, error) => {
        if (finished || run !== generation) return;
        pendingText += decoder.decode();
        if (pendingText) { textNode.appendData(pendingText); pendingText = ""; }
        finished = true;
        clearInterval(ticker);
        clearInterval(haltPoll);
        const em = emulator;
        setTimeout(() => em && em.stop(), 0);
        if (!error) $("stats").textContent = `${beats} tokens, ${rate()} tok/s` +
            (info.temperature > 0 ? `, seed ${info.seed}` : "") + `, loaded in ${((tLoaded - t0) / 1000).toFixed(2)} s`;
        setStatus(message, error);
        window.bootllama.runs += 1;
    };

    const t0 = performance.now();
    emulator = new V86({
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
    const em = emulator;
    em.add_listener("serial0-output-byte", (byte) => {
        if (run !== generation || finished) return;
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
        if (run !== generation) return;
        const cpu = em.v86.cpu;
        cpu.io.register_write(0xF4, {}, (al) => {
            al &= 0xFF;
            if (al === 0) { finish("done", false); return; }
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
    // halted with interrupts off and no exit code: nothing more will come
    const haltPoll = setInterval(() => {
        const cpu = em.v86 && em.v86.cpu;
        if (cpu && cpu.in_hlt[0] && !(cpu.flags[0] & 0x200)) finish("the PC halted before the story was over", true);
    }, 250);
}

// COM1's receiver: v86's UART queues what it is sent, so a line typed early waits for the PC
function sendBytes(bytes) {
    for (const byte of bytes) emulator.bus.send("serial0-input", byte);
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

// Boot the story machine the site was written with (talk.img): no image is built
async function bootStoryMachine() {
    const info = JSON.parse(new TextDecoder().decode(await fetchBytes("talk.json")));
    fillForm(Object.fromEntries(Object.entries(info.settings).map(([k, v]) => [k, String(v)])));
    setStatus("fetching the story machine");
    history.pushState(null, "", `?${new URLSearchParams(info.settings).toString().replace(/\+/g, "%20")}`);
    await boot(await fetchBytes("talk.img"), info);
}

let talkStarting = null;
$("talk").addEventListener("submit", async (event) => {
    event.preventDefault();
    const line = $("line").value;
    $("line").value = "";
    try {
        if (!typing || !typing.typed) {
            if (!talkStarting) talkStarting = bootStoryMachine().finally(() => { talkStarting = null; });
            await talkStarting;
        }
        sendInput(new TextEncoder().encode(line + "\n"), line + "\n");
    } catch (e) {
        console.error(e);
        setStatus(`error: ${e.message || JSON.stringify(e)}`, true);
    }
});

$("eot").addEventListener("click", () => {
    if (typing && typing.typed) sendInput(Uint8Array.of(4), null);  // EOT: end of input
});

async function start(raw, fromUrl) {
    const [settings, error] = checkSettings(raw);
    if (error) { setStatus(error, true); return; }
    try {
        if (fromUrl !== "default" && settings.i === "-") {
            await bootStoryMachine();
        } else if (fromUrl === "default") {
            const info = JSON.parse(new TextDecoder().decode(await fetchBytes("boot.json")));
            fillForm(Object.fromEntries(Object.entries(info.settings).map(([k, v]) => [k, String(v)])));
            setStatus("fetching the image");
            await boot(await fetchBytes("boot.img"), info);
        } else {
            fillForm(settings);
            const [bytes, info] = await buildImage(settings);
            await boot(bytes, info);
        }
    } catch (e) {
        console.error(e);
        setStatus(e instanceof UserError ? e.message : `error: ${e.message || JSON.stringify(e)}`, true);
    }
}

$("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    const raw = { i: $("prompt").value, n: $("steps").value, t: $("temperature").value, s: $("seed").value };
    const [settings, error] = checkSettings(raw);
    if (error) { setStatus(error, true); return; }
    const query = new URLSearchParams(settings).toString().replace(/\+/g, "%20");
    history.pushState(null, "", `?${query}`);
    start(settings, "form");
});

window.addEventListener("popstate", () => location.reload());

const params = new URLSearchParams(location.search);
if (["i", "n", "t", "s"].some((k) => params.has(k))) {
    start({ i: params.get("i") ?? "", n: params.get("n") ?? "0", t: params.get("t") ?? "0", s: params.get("s") ?? "0" }, "url");
} else {
    start({}, "default");
}
