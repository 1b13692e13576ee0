// Node's "url", which a dependency of vtk.js imports but the viewer never uses.
export default {};
