// Light progressive enhancement: copy buttons and confirmations. Everything works without it.
document.addEventListener("click", (ev) => {
  const copy = ev.target.closest("[data-copy]");
  if (copy) {
    const el = document.getElementById(copy.dataset.copy);
    const text = el.tagName === "UL" ? [...el.querySelectorAll("li")].map((li) => li.textContent.trim()).join("\n")
                                      : el.textContent.trim();
    navigator.clipboard.writeText(text).then(() => { copy.textContent = "Copied"; },
                                             () => { copy.textContent = "Select and copy"; });
    return;
  }
  const confirmBtn = ev.target.closest("[data-confirm]");
  if (confirmBtn && !window.confirm(confirmBtn.dataset.confirm)) ev.preventDefault();
});
