// The emergency stop: its state; engage with a reason (operator and above), release
// (administrators only); both confirmed in a dialog.

import { api, can, session } from "../api.js";
import { badge, confirmDialog, field, h, pageHeading, say, when } from "../dom.js";

function stateCard(stop) {
  return h(
    "section",
    {
      class: `card stop-state ${stop.engaged ? "engaged" : "released"}`,
      id: "stop-state",
      "aria-labelledby": "stop-title",
    },
    h("h2", { id: "stop-title" }, "State"),
    h(
      "p",
      { class: "stop-status" },
      badge(stop.engaged ? "engaged" : "released", stop.engaged ? "bad" : "ok"),
      " ",
      stop.description,
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Reason"),
      h("dd", {}, stop.reason || "—"),
      h("dt", {}, "Engaged by"),
      h("dd", {}, stop.engaged_by ? `${stop.engaged_by}, ${when(stop.engaged_at)}` : "—"),
      h("dt", {}, "Released by"),
      h("dd", {}, stop.released_by ? `${stop.released_by}, ${when(stop.released_at)}` : "—"),
    ),
  );
}

let notice = ""; // shown once, after the page renders again

export async function render(root, { refresh, refreshStop }) {
  root.append(
    ...pageHeading(
      "Emergency stop",
      "One switch that stops all automation: no claim and no AWS call until an administrator releases it.",
    ),
  );
  // The state unreadable (the database down) must not hide the brake: engaging still
  // sets the stop's Redis key, and the answer says whether the database recorded it.
  let stop = null;
  try {
    stop = await api("/emergency-stop");
    root.append(stateCard(stop));
  } catch (error) {
    root.append(
      h(
        "p",
        { class: "note", id: "stop-unknown", role: "alert" },
        `The stop's state cannot be read: ${error.message}. Engaging still stops the workers; ` +
          "the answer says whether it was recorded.",
      ),
    );
  }
  if (notice) root.append(h("p", { class: "note", id: "stop-notice", role: "status" }, notice));
  notice = "";
  const done = async (message) => {
    say(message);
    await refreshStop();
    await refresh();
  };

  if (!stop?.engaged && can("operator")) {
    const reason = h("textarea", { name: "reason", rows: 3, maxlength: 2000, required: true });
    const form = h(
      "form",
      { class: "card stop-form", "aria-labelledby": "engage-title" },
      h("h2", { id: "engage-title" }, "Engage"),
      field("Reason (shown to every worker, and audited)", reason),
      h("button", { type: "submit", class: "danger big" }, "Engage emergency stop"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const why = reason.value.trim();
      if (!why) {
        reason.focus();
        return;
      }
      let engaged = null;
      const answer = await confirmDialog({
        title: "Engage the emergency stop?",
        message: `All automation stops now: "${why}". Only an administrator can release it.`,
        confirmLabel: "Engage now",
        danger: true,
        act: async () => {
          engaged = await api("/emergency-stop", { method: "POST", body: { reason: why } });
        },
      });
      if (answer === null) return;
      // someone engaged it first: theirs is the stop's reason, and the page must not say it
      // was ours (our reason is in the audit log)
      const first = `It was already engaged by ${engaged.engaged_by}: "${engaged.reason}".`;
      notice = engaged.already_engaged ? `${first} Your reason is kept in the audit log.` : "";
      await done(
        engaged.already_engaged
          ? `Emergency stop already engaged by ${engaged.engaged_by}.`
          : `Emergency stop engaged by ${session().username}.`,
      );
    });
    root.append(form);
  } else if (stop?.engaged && can("administrator")) {
    const release = h("button", { type: "button", class: "primary big" }, "Release emergency stop");
    release.addEventListener("click", async () => {
      const answer = await confirmDialog({
        title: "Release the emergency stop?",
        message: `Automation resumes within its policies. It was engaged by ${stop.engaged_by}: "${stop.reason}".`,
        confirmLabel: "Release now",
        act: () => api("/emergency-stop/release", { method: "POST" }),
      });
      if (answer !== null) await done(`Emergency stop released by ${session().username}.`);
    });
    root.append(
      h(
        "section",
        { class: "card", "aria-labelledby": "release-title" },
        h("h2", { id: "release-title" }, "Release"),
        release,
      ),
    );
  } else {
    const role = session().role;
    root.append(
      h(
        "p",
        { class: "note", id: "stop-note" },
        stop?.engaged
          ? `Only an administrator can release the stop; you are ${role}.`
          : `Operators, approvers and administrators can engage the stop; you are ${role}.`,
      ),
    );
  }
}
