"""A self-contained HTML page to explore an ``Explanation`` (no server, no network).

Hovering or clicking the image shows, for the patch under the pointer, the rows of A, A_fb
and A' as heat maps and FSA's P as bars; classes' P maps and the host-only / FSA masks can
be switched. Rows are embedded for a regular grid of query patches (every ``stride``-th row
and column of each window's grid, chosen so the page stays under a size budget) as uint8
(each row scaled by its maximum); the pointer snaps to the nearest embedded query.
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
from PIL import Image

from fbseg.viz import blend, palette
from fbseg.viz.sheet import colormap

PAGE_BUDGET = 8_000_000  # bytes of embedded rows, before base64
VIEW_SIDE = 640


def query_stride(n_windows: int, grid: tuple[int, int], budget: int = PAGE_BUDGET) -> int:
    """The smallest stride s whose query grid (⌈rows/s⌉·⌈cols/s⌉ rows of 3 maps) fits the
    budget over all windows."""
    rows, cols = grid
    n = rows * cols
    s = 1
    while n_windows * math.ceil(rows / s) * math.ceil(cols / s) * n * 3 * 4 / 3 > budget * 0.75:
        s += 1
    return s


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + _b64(buf.getvalue())


def _jpeg(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + _b64(buf.getvalue())


def _quantise(rows: np.ndarray) -> tuple[bytes, list[float]]:
    """(R, N) non-negative rows → uint8 bytes scaled per row, and each row's maximum."""
    top = rows.max(axis=1)
    scaled = np.round(rows / np.maximum(top, 1e-30)[:, None] * 255).astype(np.uint8)
    return scaled.tobytes(), [float(t) for t in top]


def page_data(exp, budget: int = PAGE_BUDGET) -> dict:
    """Everything the page's script reads, as JSON-ready data."""
    H, W = exp.rgb.shape[:2]
    scale = min(1.0, VIEW_SIDE / max(H, W))
    vh, vw = max(1, round(H * scale)), max(1, round(W * scale))
    view = Image.fromarray(exp.rgb).resize((vw, vh), Image.BILINEAR)
    small = lambda a: np.asarray(Image.fromarray(a).resize((vw, vh), Image.NEAREST))  # noqa: E731
    colours = palette(len(exp.classes))
    grid = exp.windows[0].grid
    stride = query_stride(len(exp.windows), grid, budget)
    q_rows = list(range(0, grid[0], stride))
    q_cols = list(range(0, grid[1], stride))
    patches = [r * grid[1] + c for r in q_rows for c in q_cols]
    windows = []
    for wi, win in enumerate(exp.windows):
        rows = exp.rows(wi, patches)
        entry = {
            "box": list(win.box),
            "pad": list(win.pad),
            "grid": list(win.grid),
            "region": [round(v, 3) for v in win.region],
            "q_rows": q_rows,
            "q_cols": q_cols,
        }
        for name in ("attn", "feedback", "final"):
            data, top = _quantise(np.clip(rows[name], 0, None))
            entry[name] = _b64(data)
            entry[name + "_max"] = top
        p = exp.window_p(wi)[patches]
        entry["p"] = _b64(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8).tobytes())
        windows.append(entry)
    return {
        "size": [H, W],
        "view": [vh, vw],
        "protocol": list(exp.protocol_size),
        "classes": list(exp.classes),
        "colours": colours.tolist(),
        "stride": stride,
        "image": _jpeg(view),
        "baseline": _png(small(blend(exp.rgb, exp.baseline_labels, colours, 0.6))),
        "feedback": _png(small(blend(exp.rgb, exp.feedback_labels, colours, 0.6))),
        "refined": (
            None
            if exp.refined_labels is None
            else _png(small(blend(exp.rgb, exp.refined_labels, colours, 0.6)))
        ),
        "class_p": [
            _png(colormap(np.asarray(Image.fromarray(exp.class_p[k]).resize((vw, vh))), 0.0, 1.0))
            for k in range(len(exp.classes))
        ],
        "viridis": colormap(np.linspace(0, 1, 256), 0, 1).tolist(),
        "windows": windows,
    }


def explain_html(exp, title: str = "fbseg explain", budget: int = PAGE_BUDGET) -> str:
    data = json.dumps(page_data(exp, budget), separators=(",", ":"))
    return _TEMPLATE.replace("__TITLE__", _escape(title)).replace("__DATA__", data)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:14px system-ui,sans-serif;margin:16px;color:#222}
.row{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}figcaption{font-weight:600;margin-bottom:4px}
canvas{border:1px solid #ccc;image-rendering:pixelated}
#main{cursor:crosshair}
.bar{display:flex;align-items:center;gap:6px;margin:2px 0}
.bar span.fill{display:inline-block;height:12px}
#info{font-family:monospace;margin:8px 0}
</style></head><body>
<h2>__TITLE__</h2>
<div>Hover or click the image (click pins the point). Mask:
<label><input type="radio" name="mask" value="none" checked> none</label>
<label><input type="radio" name="mask" value="baseline"> host only</label>
<label><input type="radio" name="mask" value="feedback"> with FSA</label>
<label id="refined-choice" hidden><input type="radio" name="mask" value="refined"> with FSA + PAMR</label>
&nbsp; P map of class: <select id="cls"><option value="-1">(none)</option></select></div>
<div id="info">point: –</div>
<div class="row">
<figure><figcaption>image</figcaption><canvas id="main"></canvas></figure>
<figure><figcaption>P at the point</figcaption><div id="bars"></div></figure>
</div>
<div class="row">
<figure><figcaption>A (host) row <span id="attn-max"></span></figcaption><canvas id="attn"></canvas></figure>
<figure><figcaption>A_fb (feedback) row <span id="feedback-max"></span></figcaption><canvas id="feedback"></canvas></figure>
<figure><figcaption>A' (final) row <span id="final-max"></span></figcaption><canvas id="final"></canvas></figure>
<div>Each row is coloured from 0 (dark) to its own maximum (yellow), given beside its name.</div>
</div>
<script>
const D = __DATA__;
const [H, W] = D.size, [VH, VW] = D.view, [PH, PW] = D.protocol;
function bytes(b64){const s=atob(b64);const a=new Uint8Array(s.length);for(let i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a;}
for (const w of D.windows){for (const k of ["attn","feedback","final","p"]) w[k+"_u8"]=bytes(w[k]);}
function img(src){const i=new Image();i.src=src;return i;}
const base=img(D.image), masks={baseline:img(D.baseline),feedback:img(D.feedback)}, pmaps=D.class_p.map(img);
if(D.refined){masks.refined=img(D.refined);document.getElementById("refined-choice").hidden=false;}
const sel=document.getElementById("cls");
D.classes.forEach((c,k)=>{const o=document.createElement("option");o.value=k;o.textContent=c;sel.appendChild(o);});
const cv={};for(const id of ["main","attn","feedback","final"]){cv[id]=document.getElementById(id);cv[id].width=VW;cv[id].height=VH;}
let pinned=null, current=null;
function toProtocol(x,y){return [Math.min(Math.floor((y+0.5)*PH/H),PH-1),Math.min(Math.floor((x+0.5)*PW/W),PW-1)];}
function pickWindow(py,px){let best=-1,bd=Infinity;D.windows.forEach((w,i)=>{const [y1,y2,x1,x2]=w.box;
 if(y1<=py&&py<y2&&x1<=px&&px<x2){const d=((y1+y2)/2-py-0.5)**2+((x1+x2)/2-px-0.5)**2;if(d<bd){bd=d;best=i;}}});return best;}
function patchOf(py,px,w){const [y1,y2,x1,x2]=w.box,[l,r,t,b]=w.pad,hp=y2-y1+t+b,wp=x2-x1+l+r;
 return [Math.min(Math.floor((py-y1+t)*w.grid[0]/hp),w.grid[0]-1),Math.min(Math.floor((px-x1+l)*w.grid[1]/wp),w.grid[1]-1)];}
function nearest(list,v){let bi=0;list.forEach((q,i)=>{if(Math.abs(q-v)<Math.abs(list[bi]-v))bi=i;});return bi;}
function query(x,y){const [py,px]=toProtocol(x,y),wi=pickWindow(py,px),w=D.windows[wi],[r,c]=patchOf(py,px,w);
 const qi=nearest(w.q_rows,r),qj=nearest(w.q_cols,c);return {x,y,wi,r,c,qr:w.q_rows[qi],qc:w.q_cols[qj],q:qi*w.q_cols.length+qj};}
function drawHeat(id,q){const ctx=cv[id].getContext("2d"),w=D.windows[q.wi],n=w.grid[0]*w.grid[1];
 ctx.globalAlpha=1;ctx.drawImage(base,0,0,VW,VH);ctx.fillStyle="rgba(0,0,0,0.6)";ctx.fillRect(0,0,VW,VH);
 const row=w[id+"_u8"].subarray(q.q*n,(q.q+1)*n),g=document.createElement("canvas");g.width=w.grid[1];g.height=w.grid[0];
 const gc=g.getContext("2d"),im=gc.createImageData(g.width,g.height);
 for(let i=0;i<n;i++){const c=D.viridis[row[i]];im.data.set([c[0],c[1],c[2],255],4*i);}gc.putImageData(im,0,0);
 const [t,l,b,r]=w.region,sx=VW/W,sy=VH/H;ctx.imageSmoothingEnabled=false;ctx.globalAlpha=0.8;
 ctx.drawImage(g,l*sx,t*sy,(r-l)*sx,(b-t)*sy);ctx.globalAlpha=1;mark(ctx,q);
 cv[id].dataset.max=w[id+"_max"][q.q];document.getElementById(id+"-max").textContent=`(max ${w[id+"_max"][q.q].toPrecision(3)})`;}
function mark(ctx,q){ctx.strokeStyle="#ff0";ctx.lineWidth=2;ctx.beginPath();ctx.arc((q.x+0.5)*VW/W,(q.y+0.5)*VH/H,6,0,2*Math.PI);ctx.stroke();}
function drawMain(){const ctx=cv.main.getContext("2d");ctx.globalAlpha=1;ctx.drawImage(base,0,0,VW,VH);
 const m=document.querySelector("input[name=mask]:checked").value;if(m!=="none")ctx.drawImage(masks[m],0,0,VW,VH);
 const k=+sel.value;if(k>=0){ctx.globalAlpha=0.85;ctx.drawImage(pmaps[k],0,0,VW,VH);ctx.globalAlpha=1;}
 if(current)mark(ctx,current);}
function drawBars(q){const w=D.windows[q.wi],K=D.classes.length,p=w.p_u8.subarray(q.q*K,(q.q+1)*K);
 const order=[...Array(K).keys()].sort((a,b)=>p[b]-p[a]).slice(0,10);
 document.getElementById("bars").innerHTML=order.map(k=>`<div class="bar"><span class="fill" style="width:${p[k]/2}px;background:rgb(${D.colours[k]})"></span>${D.classes[k]} ${(p[k]/255).toFixed(2)}</div>`).join("");}
function show(q){current=q;const info=document.getElementById("info");
 info.textContent=`point (${q.x}, ${q.y}) · window ${q.wi} · patch (${q.r}, ${q.c}) · shown: query (${q.qr}, ${q.qc})`;
 info.dataset.row=`${q.wi}:${q.q}`;for(const id of ["attn","feedback","final"])drawHeat(id,q);drawBars(q);drawMain();}
function at(ev){const b=cv.main.getBoundingClientRect();return [Math.min(W-1,Math.max(0,Math.floor((ev.clientX-b.left)*W/b.width))),Math.min(H-1,Math.max(0,Math.floor((ev.clientY-b.top)*H/b.height)))];}
cv.main.addEventListener("mousemove",ev=>{if(!pinned){const [x,y]=at(ev);show(query(x,y));}});
cv.main.addEventListener("click",ev=>{const [x,y]=at(ev);pinned=query(x,y);show(pinned);});
document.querySelectorAll("input[name=mask]").forEach(e=>e.addEventListener("change",drawMain));
sel.addEventListener("change",drawMain);
base.onload=()=>{drawMain();const w=D.windows[0];show(query(Math.floor(W/2),Math.floor(H/2)));document.body.dataset.ready="1";};
</script></body></html>
"""
