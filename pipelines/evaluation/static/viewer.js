// The case table and the NiiVue viewer of an attnunet results page. Everything it loads is relative to
// the page (the vendored NiiVue beside this file, the volumes in the page's own folder): it works offline.
// The page's state is mirrored in <body data-*> (state, case, webgl2, canvas) so a headless browser can
// check it without driving the page.
import { Niivue, SHOW_RENDER } from './niivue/niivue.js'

const data = JSON.parse(document.getElementById('page-data').textContent)
const body = document.body
const OVERLAYS = ['label', 'prediction']
const TITLES = { image: 'image', label: 'reference', prediction: 'prediction' }
const overlay = Object.fromEntries(OVERLAYS.map((kind) => [kind, { shown: true, opacity: 0.5 }]))
let sortKey = data.sort.key
let descending = data.sort.descending
let nv = null
let loaded = [] // the kinds of the volumes in the viewer, in NiiVue's order
let request = 0 // the latest selection: an older one that finishes later is dropped

function number (value) {
  // JSON has no NaN or infinity: null is "not scored", the strings "inf"/"-inf" are infinite distances.
  if (value === 'inf') return Infinity
  if (value === '-inf') return -Infinity
  return value === null || value === undefined ? NaN : value
}

function format (value, digits) {
  const x = number(value)
  if (Number.isNaN(x)) return ''
  if (!Number.isFinite(x)) return x > 0 ? '\u221e' : '-\u221e'
  return x.toFixed(digits)
}

function sortedCases () {
  // Not scored (NaN) sorts as the worst of an ascending order: a missing prediction comes first.
  const key = (c) => {
    const x = sortKey === 'case' ? c.name : number(c.values[sortKey])
    return typeof x === 'number' && Number.isNaN(x) ? -Infinity : x
  }
  const cases = [...data.cases]
  cases.sort((a, b) => {
    const [x, y] = [key(a), key(b)]
    const order = x < y ? -1 : x > y ? 1 : a.name.localeCompare(b.name)
    return descending ? -order : order
  })
  return cases
}

function renderTable () {
  const head = document.querySelector('#table thead')
  const rows = document.querySelector('#table tbody')
  const columns = [{ key: 'case', label: 'case' }, { key: 'status', label: 'status' }, ...data.columns]
  head.innerHTML = ''
  const tr = document.createElement('tr')
  for (const column of columns) {
    const th = document.createElement('th')
    th.textContent = column.label
    th.title = column.title || column.label
    if (column.key === sortKey) th.className = descending ? 'sorted-desc' : 'sorted-asc'
    if (column.key !== 'status') {
      th.addEventListener('click', () => {
        descending = column.key === sortKey ? !descending : false
        sortKey = column.key
        renderTable()
      })
    }
    tr.appendChild(th)
  }
  head.appendChild(tr)
  rows.innerHTML = ''
  for (const c of sortedCases()) {
    const row = document.createElement('tr')
    row.dataset.case = c.name
    if (c.status !== 'ok') row.className = 'problem'
    if (c.name === body.dataset.case) row.classList.add('selected')
    const cells = [c.name, c.status, ...data.columns.map((col) => format(c.values[col.key], col.digits))]
    cells.forEach((text, i) => {
      const td = document.createElement('td')
      td.textContent = text
      if (i === 1) td.className = 'status'
      row.appendChild(td)
    })
    row.addEventListener('click', () => { location.hash = 'case=' + encodeURIComponent(c.name) })
    rows.appendChild(row)
  }
}

function labelColormap () {
  // Background transparent, each class its colour (the PNG overlays' colours), names for NiiVue's readout.
  const top = Math.max(0, ...data.classes.map((c) => c.value))
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ['background'] }
  for (const c of data.classes) {
    const hex = c.colour.replace('#', '')
    cm.R.push(parseInt(hex.slice(0, 2), 16))
    cm.G.push(parseInt(hex.slice(2, 4), 16))
    cm.B.push(parseInt(hex.slice(4, 6), 16))
    cm.A.push(255)
    cm.I.push(c.value)
    cm.labels.push(c.name)
  }
  return top > 0 ? cm : null
}

function renderLegend () {
  const legend = document.getElementById('legend')
  legend.innerHTML = 'classes:'
  for (const c of data.classes) {
    const swatch = document.createElement('span')
    swatch.className = 'swatch'
    swatch.style.background = c.colour
    legend.appendChild(swatch)
    legend.appendChild(document.createTextNode(c.name))
  }
}

function renderLayerControls () {
  const box = document.getElementById('layers')
  for (const kind of OVERLAYS) {
    const label = document.createElement('label')
    const toggle = document.createElement('input')
    toggle.type = 'checkbox'
    toggle.checked = true
    toggle.id = 'show-' + kind
    toggle.addEventListener('change', () => { overlay[kind].shown = toggle.checked; applyOpacity() })
    const opacity = document.createElement('input')
    opacity.type = 'range'
    opacity.min = '0'
    opacity.max = '100'
    opacity.value = String(overlay[kind].opacity * 100)
    opacity.id = 'opacity-' + kind
    opacity.title = TITLES[kind] + ' opacity'
    opacity.addEventListener('input', () => { overlay[kind].opacity = opacity.value / 100; applyOpacity() })
    label.append(toggle, ' ' + TITLES[kind] + ' ', opacity)
    box.appendChild(label)
  }
}

function applyOpacity () {
  if (!nv) return
  loaded.forEach((kind, i) => {
    // The first volume is the background even when it is a label map (a case without an image).
    if (i > 0 && kind in overlay) nv.setOpacity(i, overlay[kind].shown ? overlay[kind].opacity : 0)
  })
}

function sliceAxis () {
  // The crosshair coordinate the slider moves: z in axial, multiplanar and 3D views, y coronal, x sagittal.
  return { 1: 1, 2: 0 }[Number(document.getElementById('view').value)] ?? 2
}

function syncSlider () {
  if (nv) document.getElementById('slice').value = String(Math.round(nv.scene.crosshairPos[sliceAxis()] * 1000))
}

async function select (name) {
  const c = data.cases.find((x) => x.name === name)
  if (!c || !nv) return
  const mine = ++request
  body.dataset.case = c.name
  body.dataset.state = 'loading'
  document.getElementById('case-name').textContent = c.name
  document.querySelectorAll('#table tbody tr').forEach((tr) => tr.classList.toggle('selected', tr.dataset.case === c.name))
  const message = document.getElementById('message')
  message.textContent = c.note || ''
  const kinds = ['image', ...OVERLAYS].filter((kind) => c.layers[kind])
  if (!kinds.length) {
    message.textContent = 'no file of this case to show'
    body.dataset.state = 'loaded'
    return
  }
  try {
    await nv.loadVolumes(kinds.map((kind) => ({ url: c.layers[kind], name: c.layers[kind].split('/').pop() })))
    if (mine !== request) return
    loaded = kinds
    const cm = labelColormap()
    kinds.forEach((kind, i) => { if (kind !== 'image' && cm) nv.volumes[i].setColormapLabel(cm) })
    nv.updateGLVolume()
    applyOpacity()
    syncSlider()
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)))
    body.dataset.volumes = String(nv.volumes.length)
    body.dataset.state = 'loaded'
  } catch (error) {
    message.textContent = 'cannot show ' + c.name + ': ' + error
    body.dataset.state = 'error'
  }
}

function caseFromHash () {
  const match = /(?:^|[#&])case=([^&]*)/.exec(location.hash)
  return match ? decodeURIComponent(match[1]) : null
}

async function main () {
  document.getElementById('notes').textContent = data.notes.join(' ')
  const probe = document.createElement('canvas').getContext('webgl2')
  body.dataset.webgl2 = probe ? 'yes' : 'no'
  renderTable()
  renderLegend()
  renderLayerControls()
  const canvas = document.getElementById('gl')
  const rect = canvas.getBoundingClientRect()
  body.dataset.canvas = [rect.left, rect.top, rect.width, rect.height].map(Math.round).join(',')
  if (!probe) {
    document.getElementById('message').textContent = 'this browser has no WebGL2: the viewer cannot draw'
    body.dataset.state = 'error'
    return
  }
  nv = new Niivue({
    backColor: [0, 0, 0, 1],
    show3Dcrosshair: true,
    crosshairColor: [1, 1, 1, 0.6], // red would hide the first class's colour
    crosshairWidth: 1, // mm: NiiVue's default unit, a voxel, covers the structures of a coarse scan
    crosshairWidthUnit: 'mm',
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    dragAndDropEnabled: false,
    isColorbar: false
  })
  await nv.attachTo('gl')
  nv.setSliceType(Number(document.getElementById('view').value))
  nv.onLocationChange = syncSlider
  document.getElementById('view').addEventListener('change', (event) => {
    nv.setSliceType(Number(event.target.value))
    syncSlider()
  })
  document.getElementById('slice').addEventListener('input', (event) => {
    nv.scene.crosshairPos[sliceAxis()] = event.target.value / 1000
    nv.drawScene()
  })
  window.addEventListener('hashchange', () => select(caseFromHash()))
  const first = caseFromHash() ?? sortedCases()[0]?.name
  if (first !== undefined) await select(first)
}

main().catch((error) => {
  document.getElementById('message').textContent = 'the viewer failed: ' + error
  body.dataset.state = 'error'
})
