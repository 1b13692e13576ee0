// Node's "events", which a dependency of vtk.js imports but the viewer never uses.
export class EventEmitter {
  on() { return this; }
  emit() { return false; }
}
export default EventEmitter;
