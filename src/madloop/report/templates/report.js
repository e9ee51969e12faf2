// Click a figure to see it full-size; click again (or press Escape) to close. Nothing is fetched.
(function () {
  var box = document.getElementById("zoom");
  function show(src) {
    var big = box.querySelector("img");
    if (!big) {  // made on first use, so the page never holds an <img> without a picture
      big = document.createElement("img");
      big.alt = "zoomed figure";
      box.appendChild(big);
    }
    big.src = src;
    box.hidden = false;
  }
  document.querySelectorAll("main figure img").forEach(function (img) {
    img.addEventListener("click", function () { show(img.src); });
  });
  box.addEventListener("click", function () { box.hidden = true; });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") box.hidden = true; });
})();
