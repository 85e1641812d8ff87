"""The landing page: ``index.html``, ``app.js`` and ``styles.css``, served by ``aegis serve``."""
