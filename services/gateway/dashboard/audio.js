// Audio in the browser: waveform pictures and the microphone recorder.

let context;
function audioContext() {
  context ||= new AudioContext();
  return context;
}

// Lets sound start later: called from a click, where browsers allow an AudioContext to start.
export function wakeAudio() {
  audioContext().resume().catch(() => {});
}

// Draws the peaks of an audio file (a Blob) on a canvas; returns the duration in seconds.
export async function drawWaveform(canvas, blob) {
  const audio = await audioContext().decodeAudioData(await blob.arrayBuffer());
  const samples = audio.getChannelData(0);
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio || 300);
  const height = (canvas.height = canvas.clientHeight * devicePixelRatio || 48);
  const draw = canvas.getContext("2d");
  draw.clearRect(0, 0, width, height);
  draw.fillStyle = getComputedStyle(canvas).color;
  const step = Math.max(1, Math.floor(samples.length / width));
  for (let x = 0; x < width; x++) {
    let peak = 0;
    for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) peak = Math.max(peak, Math.abs(samples[i]));
    const bar = Math.max(1, peak * height);
    draw.fillRect(x, (height - bar) / 2, 1, bar);
  }
  canvas.dataset.drawn = "true";
  return audio.duration;
}

// The container browsers record speech in: WebM/Opus where they can.
export function recordingType() {
  for (const type of ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"]) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(type)) return type;
  }
  return "";
}

// Records from the microphone with a level meter. `onLevel(0..1)` is called on each frame
// while recording; stop() resolves with the recording as a Blob.
export class Recorder {
  constructor(onLevel) {
    this.onLevel = onLevel;
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const type = recordingType();
    this.recorder = new MediaRecorder(this.stream, type ? { mimeType: type } : {});
    this.chunks = [];
    this.recorder.ondataavailable = (event) => event.data.size && this.chunks.push(event.data);
    this.recorder.start(250);
    const analyser = audioContext().createAnalyser();
    analyser.fftSize = 1024;
    this.source = audioContext().createMediaStreamSource(this.stream);
    this.source.connect(analyser);
    const frame = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (!this.recorder || this.recorder.state !== "recording") return;
      analyser.getFloatTimeDomainData(frame);
      let sum = 0;
      for (const value of frame) sum += value * value;
      this.onLevel(Math.min(1, Math.sqrt(sum / frame.length) * 4));
      requestAnimationFrame(tick);
    };
    await audioContext().resume();
    tick();
  }

  stop() {
    return new Promise((resolve) => {
      this.recorder.onstop = () => {
        const blob = new Blob(this.chunks, { type: this.recorder.mimeType || "audio/webm" });
        this.stream.getTracks().forEach((track) => track.stop());
        this.source.disconnect();
        this.onLevel(0);
        resolve(blob);
      };
      this.recorder.stop();
    });
  }
}

// Plays a streamed WAV while it arrives: a 44-byte header of unknown length, then 16-bit mono
// PCM (how `"stream": true` answers). Each piece becomes an AudioBuffer started where the one
// before ends, so playback begins with the first piece. wav() is the whole, with its real sizes.
export class StreamedWav {
  constructor() {
    this.head = new Uint8Array(0);
    this.pieces = []; // the PCM as it came, for the finished file
    this.odd = null; // a sample's first byte, when a piece ends between its two bytes
    this.sampleRate = 0;
    this.sources = new Set();
    this.nextStart = 0;
    this.received = 0; // PCM bytes
    this.started = false; // whether a piece has been scheduled on a running AudioContext
    this.stopped = false; // the listener stopped it: the rest is only kept for the file
    this.onIdle = () => {}; // called when every scheduled piece has played
  }

  // Takes the next bytes of the body; resolves true when they started the playback.
  async push(bytes) {
    if (!this.sampleRate) {
      const head = new Uint8Array(this.head.length + bytes.length);
      head.set(this.head);
      head.set(bytes, this.head.length);
      if (head.length < 44) {
        this.head = head;
        return false;
      }
      this.head = head.slice(0, 44);
      this.sampleRate = readHeader(this.head);
      bytes = head.subarray(44);
    }
    if (this.odd !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.odd;
      joined.set(bytes, 1);
      bytes = joined;
      this.odd = null;
    }
    if (bytes.length % 2) {
      this.odd = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (!bytes.length) return false;
    bytes = bytes.slice(); // its own, aligned buffer
    this.pieces.push(bytes);
    this.received += bytes.length;
    return this.schedule(new Int16Array(bytes.buffer));
  }

  async schedule(samples) {
    if (this.stopped) return false;
    const context = audioContext();
    if (context.state !== "running") await context.resume();
    const buffer = context.createBuffer(1, samples.length, this.sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    // A little lead on the first piece (and after a gap) so the next arrives before this ends.
    this.nextStart = Math.max(this.nextStart, context.currentTime + 0.05);
    source.start(this.nextStart);
    this.nextStart += buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      if (!this.sources.size) this.onIdle();
    };
    if (this.started || context.state !== "running") return false;
    this.started = true;
    return true;
  }

  // Seconds of audio received so far.
  get seconds() {
    return this.sampleRate ? this.received / 2 / this.sampleRate : 0;
  }

  // Whether scheduled audio is still to be heard.
  get playing() {
    return this.sources.size > 0;
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) {
      source.onended = null;
      source.stop();
    }
    this.sources.clear();
  }

  // The whole stream as a WAV file with its sizes filled in.
  wav() {
    const head = this.head.slice();
    const sizes = new DataView(head.buffer);
    sizes.setUint32(4, 36 + this.received, true);
    sizes.setUint32(40, this.received, true);
    return new Blob([head, ...this.pieces], { type: "audio/wav" });
  }
}

// The sample rate of a 16-bit mono PCM WAV header; throws on anything else.
function readHeader(head) {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const text = (at) => String.fromCharCode(...head.subarray(at, at + 4));
  const pcm16mono = view.getUint16(20, true) === 1 && view.getUint16(22, true) === 1 && view.getUint16(34, true) === 16;
  if (text(0) !== "RIFF" || text(8) !== "WAVE" || text(36) !== "data" || !pcm16mono) {
    throw new Error("The stream is not 16-bit mono PCM WAV.");
  }
  return view.getUint32(24, true);
}
