// The stream's driver: runs the pure state machine of js/stream.js against a real WebSocket and real timers,
// and hands every effect that concerns the page (files, programs, status, sign-out) to ``onEffect``.

import { initial, step } from "./stream.js";

export class StreamLink {
  /** ``api``: a js/api.js client (for tickets); ``onEffect(effect)``: the page's part of each step. */
  constructor(api, onEffect) {
    this.api = api;
    this.onEffect = onEffect;
    this.state = initial();
    this.socket = null;
    this.cancels = new Set(); // of the pending timers: close() runs them all
    this.watchdog = null;
  }

  start() {
    this.dispatch({ type: "start" });
  }

  stop() {
    this.dispatch({ type: "stop" });
  }

  online() {
    this.dispatch({ type: "online" });
  }

  chooseNight(night) {
    this.dispatch({ type: "night", night });
  }

  dispatch(event) {
    const { state, effects } = step(this.state, event);
    this.state = state;
    for (const effect of effects) this.run(effect);
  }

  run(effect) {
    switch (effect.type) {
      case "close":
        this.close();
        break;
      case "fetch-ticket":
        this.fetchTicket(effect.generation);
        break;
      case "open":
        this.open(effect.params);
        break;
      case "watch":
        this.watch(effect);
        break;
      case "wait":
        this.wait(effect);
        break;
      default:
        this.onEffect(effect);
    }
  }

  close() {
    for (const cancel of this.cancels) cancel();
    this.cancels.clear();
    clearTimeout(this.watchdog);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      try {
        socket.close(1000, "client closes");
      } catch {
        // already closed
      }
    }
  }

  async fetchTicket(generation) {
    let ticket;
    try {
      ticket = await this.api.ticket();
    } catch (err) {
      this.dispatch({ type: "ticket-failed", generation, status: err.status, message: err.message });
      return;
    }
    this.dispatch({ type: "ticket", generation, ticket });
  }

  open(params) {
    const generation = this.state.generation;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(`${scheme}//${location.host}/v1/stream?${new URLSearchParams(params)}`);
    } catch {
      this.dispatch({ type: "closed", generation, code: 0 });
      return;
    }
    this.socket = socket;
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to understand; the protocol sends JSON objects only
      }
      this.dispatch({ type: "message", generation, message });
    });
    socket.addEventListener("close", (event) => this.dispatch({ type: "closed", generation, code: event.code }));
  }

  watch({ seconds, generation }) {
    // No message for three heartbeat periods: the connection is dead even if the socket has not noticed.
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.dispatch({ type: "watchdog", generation }), seconds * 1000);
  }

  wait({ seconds, reason, generation }) {
    const due = Date.now() + seconds * 1000;
    const show = () => {
      const left = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      this.onEffect({ type: "status", kind: "reconnecting", text: `Reconnecting in ${left} s${reason ? ` (${reason})` : ""}` });
    };
    show();
    const countdown = setInterval(show, 1000);
    const retry = setTimeout(() => this.dispatch({ type: "retry-due", generation }), seconds * 1000);
    this.cancels.add(() => {
      clearInterval(countdown);
      clearTimeout(retry);
    });
  }
}
