// Audio in the browser: waveform pictures and the microphone recorder.

let context;
function audioContext() {
  context ||= new AudioContext();
  return context;
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
