// The one script the gateway serves: the study viewer (#viewer) and the prior
// comparison (#compare); each starts only on the page that has its element.
import "./viewer.js";
import "./compare.js";
