"""``slides.html`` of a lecture: one static page, no network, that steps through the chapters'
clips and the run's figures with the arrow keys, PageUp/PageDown (presenter clickers), space
or a click. Everything is inline (CSS, JS) and every clip or figure is a relative path, so the
lecture folder can be copied anywhere and opened from disk.
"""

from __future__ import annotations

import html
from pathlib import Path

__all__ = ["slides_html", "timestamp"]


def timestamp(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


_CSS = """
html,body{margin:0;height:100%;background:#0f1117;color:#ECEFF4;font-family:"DejaVu Sans",sans-serif;overflow:hidden}
.slide{position:absolute;inset:0;display:none;flex-direction:column;align-items:center;justify-content:center;padding:2vh 3vw;box-sizing:border-box}
.slide.active{display:flex}
h1{font-size:5vh;margin:0 0 1.5vh;font-weight:normal}
h2{font-size:3.4vh;margin:0 0 1.5vh;font-weight:normal;color:#ECEFF4}
.sub{color:#9AA3B2;font-size:2.4vh;margin-bottom:3vh}
video,img.fig{max-width:94vw;max-height:82vh;background:#0f1117;border:1px solid #3B4252}
ol{font-size:3vh;line-height:1.6;color:#ECEFF4}
ol li span{color:#9AA3B2;font-family:"DejaVu Sans Mono",monospace;margin-left:1em;font-size:2.4vh}
#bar{position:fixed;bottom:0;left:0;right:0;display:flex;justify-content:space-between;align-items:center;padding:0.6vh 1.5vw;color:#9AA3B2;font-size:1.8vh}
#bar button{background:#1B1F2A;color:#ECEFF4;border:1px solid #3B4252;font-size:1.8vh;padding:0.3vh 1.2vw;cursor:pointer}
.keys{opacity:0.7}
"""

_JS = """
const slides=[...document.querySelectorAll('.slide')];let cur=0;
function show(i){i=Math.max(0,Math.min(slides.length-1,i));
 slides.forEach((s,k)=>{s.classList.toggle('active',k===i);const v=s.querySelector('video');
  if(v){if(k===i){v.currentTime=0;v.play().catch(()=>{});}else{v.pause();}}});
 cur=i;document.getElementById('pos').textContent=(i+1)+' / '+slides.length;history.replaceState(null,'','#'+(i+1));}
function step(d){show(cur+d);}
document.addEventListener('keydown',e=>{
 if(['ArrowRight','PageDown','ArrowDown',' ','n'].includes(e.key)){e.preventDefault();step(1);}
 else if(['ArrowLeft','PageUp','ArrowUp','Backspace','p'].includes(e.key)){e.preventDefault();step(-1);}
 else if(e.key==='Home'){show(0);}else if(e.key==='End'){show(slides.length-1);}
 else if(e.key==='k'||e.key==='Enter'){const v=slides[cur].querySelector('video');if(v){v.paused?v.play():v.pause();}}
 else if(e.key==='r'){const v=slides[cur].querySelector('video');if(v){v.currentTime=0;v.play();}}
 else if(e.key==='f'){document.fullscreenElement?document.exitFullscreen():document.documentElement.requestFullscreen();}});
document.addEventListener('click',e=>{if(e.target.closest('video,button,a'))return;step(1);});
document.getElementById('prev').onclick=()=>step(-1);document.getElementById('next').onclick=()=>step(1);
show((parseInt(location.hash.slice(1))||1)-1);
"""


def slides_html(result: dict) -> str:
    """A self-contained slide deck: the clips and figures by relative path, inline CSS/JS, nothing fetched."""
    e = html.escape
    items = "".join(f"<li>{e(c['title'])}<span>{timestamp(c['start'])}</span></li>" for c in result["chapters"])
    slides = [f'<section class="slide" data-kind="title"><h1>{e(result["title"])}</h1>'
              f'<div class="sub">{e(result.get("subtitle", ""))}</div><ol>{items}</ol></section>']
    for c in result["chapters"]:
        slides.append(f'<section class="slide" data-kind="clip" data-scene="{e(c["scene"])}">'
                      f'<h2>{c["index"]}. {e(c["title"])}</h2>'
                      f'<video src="{e(c["segment"])}" poster="{e(c["still"])}" controls muted playsinline preload="auto">'
                      f'</video></section>')
    for f in result.get("figures", []):
        name = Path(f).stem.replace("_", " ")
        slides.append(f'<section class="slide" data-kind="figure"><img class="fig" src="{e(f)}" alt="{e(name)}"></section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(result['title'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(slides)
            + '\n<div id="bar"><button id="prev">◀</button><span class="keys">→ / PageDown / space: next · ← / PageUp: back · '
              'k: play/pause · r: replay · f: full screen</span><span id="pos"></span><button id="next">▶</button></div>'
            + f"\n<script>{_JS}</script>\n</body></html>\n")
